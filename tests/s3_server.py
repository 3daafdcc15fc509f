"""An S3 endpoint on 127.0.0.1 for the tests: moto's server on a port the system picks, with the
buckets named on the command line. Prints `listening on http://127.0.0.1:<port>`, then serves
until its standard input closes (its parent test ends)."""

import sys

import boto3
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
endpoint = f"http://127.0.0.1:{server._server.server_port}"
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
for bucket in sys.argv[1:]:
    s3.create_bucket(Bucket=bucket)
print(f"listening on {endpoint}", flush=True)
sys.stdin.read()
server.stop()
