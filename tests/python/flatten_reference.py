#!/usr/bin/env python3
"""Reference for the flattened mode: the starting notebook's pipeline, run for real.

For every <Type>.ndjson[.gz] in DATA_DIR: json.loads per non-blank line, flatten_json.flatten,
pandas.json_normalize (exactly as ../shared/bench/b_pandas_flatten.py does). Writes OUT_DIR/<Type>.json:
  {"rows": N, "columns": [{"name": ..., "dtype": "<pandas dtype>", "values": [...]}, ...]}
in the DataFrame's column order. Values: NaN/None -> null; ints and bools as JSON; strings and
lists as JSON; floats as {"float": repr(v)} (shortest round trip: the text parses back to the same
f64 with a correctly rounding parser, which a JSON library's float reader need not be).
usage: flatten_reference.py DATA_DIR OUT_DIR"""
import glob, gzip, json, math, os, sys

import pandas as pd
from flatten_json import flatten


def plain(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, 'item') and not isinstance(v, (list, dict, str)):
        v = v.item()  # numpy scalar -> Python scalar
        if isinstance(v, float) and math.isnan(v):
            return None
    if isinstance(v, float):
        return {'float': repr(v)}
    return v


def main(data_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(data_dir, '*.ndjson*'))):
        rtype = os.path.basename(path).split('.')[0]
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rt', encoding='utf-8') as fh:
            resources = [json.loads(line) for line in fh if line.strip()]
        df = pd.json_normalize(list(map(flatten, resources)))
        cols = [{'name': str(c), 'dtype': str(df[c].dtype),
                 'values': [plain(v) for v in df[c].tolist()]} for c in df.columns]
        with open(os.path.join(out_dir, rtype + '.json'), 'w') as out:
            json.dump({'rows': len(df), 'columns': cols}, out)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
