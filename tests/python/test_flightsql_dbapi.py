"""flightsql-dbapi (pyarrow.flight based, an independent implementation) against fhirflight."""

from flightsql import FlightSQLClient, connect

from conftest import PASSWORD, USER


def test_connect_query_read(server, expected):
    host, port = server
    client = FlightSQLClient(host=host, port=port, user=USER, password=PASSWORD, insecure=True)
    conn = connect(client)
    cur = conn.cursor()
    sql = "SELECT id, gender FROM patient WHERE gender = 'female' ORDER BY id"
    cur.execute(sql)
    assert [d[0] for d in cur.description] == ["id", "gender"]
    rows = [tuple(row) for row in cur.fetchall()]
    assert rows == [(r["id"], r["gender"]) for r in expected(sql)]
    assert len(rows) > 0
    cur.close()
    conn.close()
