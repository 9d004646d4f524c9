#!/usr/bin/env python3
"""An ordinary gRPC client (grpcio from PyPI) for the sealroom agent.

Generates Python stubs from proto/ with grpc_tools at run time, then:
  evidence   GetEvidence with a given nonce; prints JSON with the serialized Evidence (hex)
  bad-nonce  GetEvidence with a 31-byte nonce; prints the status code and message
  reflect    lists the services through gRPC server reflection (grpcio-reflection's client)
"""
import argparse
import importlib
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs(proto_dir, out):
    files = ["sealroom/attestation/v1/evidence.proto", "sealroom/attestation/v1/attestation.proto"]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    pb = importlib.import_module("sealroom.attestation.v1.attestation_pb2")
    rpc = importlib.import_module("sealroom.attestation.v1.attestation_pb2_grpc")
    return pb, rpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["evidence", "bad-nonce", "reflect"])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--nonce", default="00" * 32)
    a = ap.parse_args()
    channel = grpc.insecure_channel(a.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    if a.command == "reflect":
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        methods = []
        for s in services:
            if s == "sealroom.attestation.v1.Attestation":
                desc = db.FindFileContainingSymbol(s)
                for svc in desc.service:
                    methods = [m.name for m in svc.method]
        print(json.dumps({"services": services, "attestation_methods": methods}))
        return
    with tempfile.TemporaryDirectory(prefix="sealroom-py-") as out:
        call(a, channel, *stubs(a.proto_dir, out))


def call(a, channel, pb, rpc):
    stub = rpc.AttestationStub(channel)
    if a.command == "evidence":
        r = stub.GetEvidence(pb.GetEvidenceRequest(nonce=bytes.fromhex(a.nonce)), timeout=30)
        print(json.dumps({
            "platform": r.evidence.platform,
            "nonce": r.evidence.nonce.hex(),
            "evidence": r.evidence.SerializeToString().hex(),
        }))
    else:
        try:
            stub.GetEvidence(pb.GetEvidenceRequest(nonce=b"\x01" * 31), timeout=30)
            print(json.dumps({"code": "OK"}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "message": e.details()}))


if __name__ == "__main__":
    main()
