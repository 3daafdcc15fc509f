"""ADBC Flight SQL driver + pandas against the fhirflight server."""

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from adbc_driver_manager import DatabaseOptions

from conftest import PASSWORD, USER


@pytest.fixture
def conn(server):
    host, port = server
    with flightsql.connect(
        f"grpc://{host}:{port}",
        db_kwargs={DatabaseOptions.USERNAME.value: USER, DatabaseOptions.PASSWORD.value: PASSWORD},
    ) as conn:
        yield conn


def test_get_objects_lists_catalog_schema_tables_and_columns(conn):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    fhir = next(c for c in objects if c["catalog_name"] == "fhir")
    (r4,) = [s for s in fhir["catalog_db_schemas"] if s["db_schema_name"] == "r4"]
    tables = {t["table_name"]: t for t in r4["db_schema_tables"]}
    assert sorted(tables) == ["Condition", "Patient"]
    assert tables["Patient"]["table_type"] == "TABLE"
    columns = [c["column_name"] for c in tables["Patient"]["table_columns"]]
    assert columns == ["id", "gender", "birthDate", "name_0_given_0", "name_0_family", "deceasedBoolean"]


def test_table_schema(conn):
    schema = conn.adbc_get_table_schema("Patient", catalog_filter="fhir", db_schema_filter="r4")
    assert schema.field("birthDate").type == pa.date32()
    assert schema.field("deceasedBoolean").type == pa.bool_()
    assert schema.names[:2] == ["id", "gender"]


def test_query_into_dataframe(conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT p.id, p.name_0_family, count(c.id) AS conditions "
            "FROM Patient p LEFT JOIN Condition c ON c.subject_reference = 'Patient/' || p.id "
            "GROUP BY p.id, p.name_0_family ORDER BY p.id"
        )
        df = cur.fetch_df()
    assert df["id"].tolist() == ["pat-1", "pat-2", "pat-3"]
    assert df["name_0_family"].tolist() == ["Lovelace", "Turing", "Hopper"]
    assert df["conditions"].tolist() == [2, 1, 1]


def test_query_with_parameters_into_dataframe(conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, birthDate FROM Patient WHERE gender = ? AND birthDate > ? ORDER BY id",
            parameters=("female", datetime.date(1990, 1, 1)),
        )
        df = cur.fetch_df()
    assert df["id"].tolist() == ["pat-3"]
    assert df["birthDate"].tolist() == [datetime.date(2001, 1, 30)]
    # The same statement, re-executed with other values.
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM Condition WHERE code_coding_0_code = ?", parameters=("44054006",))
        assert cur.fetchall() == [(2,)]


def test_bad_sql_is_an_error_and_the_connection_survives(conn):
    with conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM Encounter")
        cur.execute("SELECT count(*) FROM Patient")
        assert cur.fetchone() == (3,)
