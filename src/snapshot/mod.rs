//! Local snapshot store: Parquet + manifest, atomic commit, incremental merge.
