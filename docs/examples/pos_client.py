#!/usr/bin/env python3
"""A small POS client for sscardd (JSON-RPC 2.0 over a Unix socket, one JSON object a line).

Usage:
    pos_client.py --socket /run/sscard/sscard.sock --token TOKEN [--amount 1234] [--pin 123456]

Runs the counter's daily script: log in, read the card, pay, query the payment, settle
the day. Standard library only. Exit code 0 when every step succeeded.
"""
import argparse
import datetime
import json
import socket
import sys
import uuid


class RpcError(Exception):
    def __init__(self, error):
        self.code = error.get("code")
        self.kind = (error.get("data") or {}).get("kind")
        self.data = error.get("data") or {}
        super().__init__(f"{self.kind or self.code}: {error.get('message')}")


class SscardClient:
    """One connection to sscardd; calls are sequential on it."""

    def __init__(self, path, timeout=60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("r", encoding="utf-8", newline="\n")
        self.next_id = 1

    def call(self, method, **params):
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.next_id += 1
        self.sock.sendall((json.dumps(req, ensure_ascii=False) + "\n").encode("utf-8"))
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("sscardd closed the connection")
            msg = json.loads(line)
            if "id" not in msg:  # a notification (events.subscribe); not ours
                continue
            if msg["id"] != req["id"]:
                raise RuntimeError(f"answer for id {msg['id']}, expected {req['id']}")
            if "error" in msg:
                raise RpcError(msg["error"])
            return msg["result"]

    def close(self):
        self.sock.close()


def show(title, obj):
    print(f"--> {title}")
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--amount", type=int, default=1234, help="amount in fen")
    ap.add_argument("--pin", default="123456")
    ap.add_argument("--reader", default=None)
    a = ap.parse_args()

    c = SscardClient(a.socket)
    reader = {"reader": a.reader} if a.reader else {}
    show("system.health", c.call("system.health"))
    show("session.login", c.call("session.login", token=a.token))
    show("reader.list", c.call("reader.list"))
    card = c.call("card.read", **reader)
    show("card.read", card)
    show("card.balance", c.call("card.balance", **reader))

    order = "POS-" + uuid.uuid4().hex[:12].upper()
    try:
        pay = c.call("pay.debit", order_id=order, amount_fen=a.amount, pin=a.pin, **reader)
    except RpcError as e:
        if e.kind != "TRANSACTION_UNCERTAIN":
            raise
        # The card left during the debit: ask again once it is back; the daemon settles it.
        print("payment uncertain; present the card again, then pay.query settles it")
        pay = c.call("pay.query", order_id=order)
    show("pay.debit", pay)
    # A retry of the same order (e.g. after a POS timeout) never debits twice.
    again = c.call("pay.debit", order_id=order, amount_fen=a.amount, pin=a.pin, **reader)
    assert again["txn_id"] == pay["txn_id"], "idempotent retry returned another payment"
    show("pay.query", c.call("pay.query", order_id=order))
    today = datetime.date.today().isoformat()
    day = c.call("settle.day", date=today)
    show("settle.day (summary)", {k: v for k, v in day.items() if k != "transactions"})
    c.close()
    print(f"paid {pay['amount_fen']} fen, balance {pay['balance_after_fen']} fen, TAC {pay['tac']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RpcError as e:
        print(f"sscardd refused: {e} {e.data}", file=sys.stderr)
        sys.exit(1)
