"""ADBC Flight SQL driver + pandas against `fhirflight serve --demo`."""

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from adbc_driver_manager import DatabaseOptions

from conftest import PASSWORD, USER

GENDERS = (
    "SELECT p.gender, count(DISTINCT p.id) AS patients, count(c.id) AS conditions "
    "FROM patient p LEFT JOIN condition c ON c.subject_reference = 'Patient/' || p.id "
    "GROUP BY p.gender ORDER BY p.gender"
)


@pytest.fixture
def conn(server):
    host, port = server
    # Autocommit as the README connects: fhirflight has no transactions to commit.
    with flightsql.connect(
        f"grpc://{host}:{port}",
        autocommit=True,
        db_kwargs={DatabaseOptions.USERNAME.value: USER, DatabaseOptions.PASSWORD.value: PASSWORD},
    ) as conn:
        yield conn


def test_query_into_dataframe(conn, expected):
    with conn.cursor() as cur:
        cur.execute(GENDERS)
        df = cur.fetch_df()
    want = expected(GENDERS)
    assert sum(r["conditions"] for r in want) > 0, "the demo population has conditions"
    assert df["gender"].tolist() == [r["gender"] for r in want]
    assert df["patients"].tolist() == [r["patients"] for r in want]
    assert df["conditions"].tolist() == [r["conditions"] for r in want]
    assert df["patients"].sum() == 20


def test_readme_query_with_camel_case_columns(conn, expected):
    """The README's example as written: FHIR's camelCase columns unquoted."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, gender, birthDate, maritalStatus_coding_0_code FROM Patient")
        patients = cur.fetch_df()
    assert list(patients.columns) == ["id", "gender", "birthDate", "maritalStatus_coding_0_code"]
    want = expected("SELECT id, BIRTHDATE FROM patient ORDER BY id")
    assert sorted(patients["id"]) == [r["id"] for r in want]
    births = {i: str(b) for i, b in zip(patients["id"], patients["birthDate"])}
    assert [births[r["id"]] for r in want] == [r["birthDate"] for r in want]


def test_query_with_parameters_into_dataframe(conn, expected):
    sql = "SELECT id FROM patient WHERE gender = ? ORDER BY id"
    with conn.cursor() as cur:
        cur.execute(sql, parameters=("female",))
        female = cur.fetch_df()
        # The same statement, re-executed with another value.
        cur.execute(sql, parameters=("male",))
        male = cur.fetch_df()
    want = expected("SELECT id, gender FROM patient ORDER BY id")
    assert female["id"].tolist() == [r["id"] for r in want if r["gender"] == "female"]
    assert male["id"].tolist() == [r["id"] for r in want if r["gender"] == "male"]
    assert len(female) > 0 and len(male) > 0


def test_get_objects_lists_catalog_schema_tables_and_columns(conn):
    with conn.cursor() as cur:  # export Patient first: browsing never exports
        cur.execute("SELECT count(*) FROM patient")
        cur.fetchall()
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    fhir = next(c for c in objects if c["catalog_name"] == "fhir")
    (schema,) = [s for s in fhir["catalog_db_schemas"] if s["db_schema_name"] == "fhir"]
    tables = {t["table_name"]: t for t in schema["db_schema_tables"]}
    assert {"Patient", "Condition", "Observation", "Encounter"} <= set(tables)
    assert tables["Patient"]["table_type"] == "TABLE"
    columns = [c["column_name"] for c in tables["Patient"]["table_columns"]]
    assert {"id", "gender", "birthDate"} <= set(columns)


def test_table_schema(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM patient")
        cur.fetchall()
    schema = conn.adbc_get_table_schema("Patient", catalog_filter="fhir", db_schema_filter="fhir")
    assert "id" in schema.names and "gender" in schema.names
    assert str(schema.field("gender").type) in ("string", "large_string", "string_view")


def test_bad_sql_is_an_error_and_the_connection_survives(conn):
    with conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM nosuchtable")
        cur.execute("SELECT count(*) FROM patient")
        assert cur.fetchone() == (20,)
