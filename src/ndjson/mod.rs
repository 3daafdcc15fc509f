//! Push decoder: NDJSON bytes to Arrow record batches (flattened or nested), schema inference.
