#!/bin/sh
# Prints a fresh .env for compose.yaml: random secrets, nothing shared with any other cluster.
#   ./generate-env.sh > .env && chmod 600 .env
set -eu
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
echo "SLUICE_CLUSTER_SECRET=$(hex 32)"
echo "SLUICE_SECRET_KEY=$(hex 32)"
echo "S3_ACCESS_KEY=sluice$(hex 6)"
echo "S3_SECRET_KEY=$(hex 24)"
echo "SLUICE_PUBLIC_URL=http://localhost:8080"
