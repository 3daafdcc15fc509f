"""Other engines read fhirflight's snapshots as Delta Lake tables: Python `deltalake`, Polars and
DuckDB's delta extension get the rows and columns of fhirflight's own query, in the cache folder
and on an S3 endpoint (moto's, on 127.0.0.1); every export is a version with its metadata, and
`fhir_snapshot` reads an earlier one."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from conftest import PATIENTS, fhirflight

COLUMNS = ["id", "gender", "birthDate", "name_0_family", "name_0_given_0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("delta-cache")


def sql(cache: Path, query: str, *flags: str) -> list[dict]:
    cmd = [fhirflight(), "sql", "--demo", "--demo-patients", PATIENTS, "--format", "json",
           "--cache-dir", str(cache), *flags, query]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def cache_command(cache: Path, *args: str) -> str:
    cmd = [fhirflight(), "cache", *args, "--cache-dir", str(cache)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_deltalake_polars_and_duckdb_read_the_rows_and_columns_of_fhirflight(cache):
    rows = sql(cache, f"SELECT {', '.join(COLUMNS)} FROM patient ORDER BY id")
    assert len(rows) == int(PATIENTS)
    columns = [r["column_name"] for r in sql(
        cache, "SELECT column_name FROM information_schema.columns "
               "WHERE table_name = 'Patient' ORDER BY ordinal_position")]
    table = cache_command(cache, "path", "Patient").strip()
    assert Path(table, "_delta_log").is_dir(), table

    delta = DeltaTable(table)
    arrow = delta.to_pyarrow_table().sort_by("id")
    assert arrow.column_names == columns
    for column in COLUMNS:
        assert arrow[column].to_pylist() == [r[column] for r in rows], column

    frame = pl.read_delta(table).sort("id")
    assert frame.columns == columns
    for column in COLUMNS:
        assert frame[column].to_list() == [r[column] for r in rows], column

    extension = glob.glob(
        f"{sys.prefix}/lib/python*/site-packages/duckdb_ext/extensions/*/*/delta.duckdb_extension")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{extension[0]}'")
    got = con.execute(f"SELECT {', '.join(COLUMNS)} FROM delta_scan('{table}') ORDER BY id")
    assert [dict(zip(COLUMNS, r)) for r in got.fetchall()] == [
        {c: r[c] for c in COLUMNS} for r in rows]


def test_a_view_is_a_delta_table_of_the_rows_fhirflight_gives(cache, tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    (views / "genders.json").write_text(json.dumps({
        "resourceType": "ViewDefinition", "name": "genders", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id", "type": "id"},
                               {"name": "gender", "path": "gender", "type": "code"}]}]}))
    rows = sql(cache, "SELECT id, gender FROM genders ORDER BY id", "--views", str(views))
    assert len(rows) == int(PATIENTS)
    patient = Path(cache_command(cache, "path", "Patient").strip()).parent
    tables = list((patient / "views").glob("genders-*"))
    assert len(tables) == 1, tables

    delta = DeltaTable(str(tables[0]))
    arrow = delta.to_pyarrow_table().sort_by("id")
    assert arrow.column_names == ["id", "gender"]
    assert arrow.to_pylist() == rows
    assert delta.history()[0]["fhirflight"]["view"] == tables[0].name
    assert pl.read_delta(str(tables[0])).sort("id").to_dicts() == rows


def test_every_export_is_a_version_with_its_metadata(cache):
    sql(cache, "SELECT count(*) FROM patient")
    table = cache_command(cache, "path", "Patient").strip()
    before = DeltaTable(table).version()
    # Kept an hour after it is superseded, the version before stays readable.
    refreshed = sql(cache, "SELECT snapshot, transaction_time FROM fhir_refresh('fhir', 'Patient')",
                    "--retention", "1h")

    delta = DeltaTable(table)
    assert delta.version() == before + 1
    assert delta.to_pyarrow_table().num_rows == int(PATIENTS)
    newest = delta.history()[0]
    export = newest["fhirflight"]
    assert export["snapshot"] == refreshed[0]["snapshot"]
    assert export["transactionTime"] == refreshed[0]["transaction_time"]
    assert export["resourceType"] == "Patient" and export["resources"] == int(PATIENTS)
    assert export["source"].startswith("demo:")

    history = json.loads(cache_command(cache, "history", "Patient", "--format", "json"))
    assert [v["version"] for v in history] == list(range(delta.version(), -1, -1))
    assert history[0]["export"] == export
    text = cache_command(cache, "history", "Patient")
    assert refreshed[0]["snapshot"] in text and "VERSION" in text

    earlier = f"SELECT id FROM fhir_snapshot('fhir', 'Patient', {before}) ORDER BY id"
    assert sql(cache, earlier) == [{"id": r["id"]} for r in sql(cache, "SELECT id FROM patient ORDER BY id")]
    assert DeltaTable(table, version=before).to_pyarrow_table().num_rows == int(PATIENTS)
    assert history[1]["export"]["snapshot"] != export["snapshot"]


def test_a_table_on_s3_reads_in_deltalake_and_polars(tmp_path):
    """`--table-location s3://...`: the table another machine or engine reads from the bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="lake")
        env = {**os.environ, **keys, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        cmd = [fhirflight(), "sql", "--demo", "--demo-patients", PATIENTS, "--format", "json",
               "--cache-dir", str(tmp_path), "--table-location", "s3://lake/fhir",
               f"SELECT {', '.join(COLUMNS)} FROM patient ORDER BY id"]
        rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                         env=env).stdout)
        listing = json.loads(cache_command(tmp_path, "list", "--format", "json"))
        table = listing[0]["snapshots"][0]["tables"]["flattened"]["delta"]
        assert table.startswith("s3://lake/fhir/"), table

        options = {**{k.lower(): v for k, v in keys.items()}, "aws_endpoint_url": endpoint,
                   "aws_allow_http": "true"}
        arrow = DeltaTable(table, storage_options=options).to_pyarrow_table().sort_by("id")
        for column in COLUMNS:
            assert arrow[column].to_pylist() == [r[column] for r in rows], column
        frame = pl.read_delta(table, storage_options=options).sort("id")
        assert frame["id"].to_list() == [r["id"] for r in rows]
    finally:
        server.stop()
