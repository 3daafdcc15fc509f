"""flightsql-dbapi (pyarrow.flight based, an independent implementation) against fhirflight."""

from flightsql import FlightSQLClient, connect

from conftest import PASSWORD, USER


def test_connect_query_read(server):
    host, port = server
    client = FlightSQLClient(host=host, port=port, user=USER, password=PASSWORD, insecure=True)
    conn = connect(client)
    cur = conn.cursor()
    cur.execute("SELECT id, gender FROM Patient WHERE gender = 'female' ORDER BY id")
    assert [d[0] for d in cur.description] == ["id", "gender"]
    assert [tuple(row) for row in cur.fetchall()] == [("pat-1", "female"), ("pat-3", "female")]
    cur.close()
    conn.close()
