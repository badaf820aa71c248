#!/usr/bin/env python3
"""A small Crown written with Python's `websockets`, to check razar against a second
WebSocket implementation (razar's tests otherwise use tokio-tungstenite).

Usage: crown_peer.py REPLY.json RECORD.jsonl

Listens on 127.0.0.1, port chosen by the OS, and prints `PORT <n>` on stdout once ready.
Every message received is appended to RECORD.jsonl as {"authorization": <header>, "message": <json>};
each `handshake` is answered with the contents of REPLY.json. Runs until killed.
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve


async def main(reply_path: str, record_path: str) -> None:
    with open(reply_path, encoding="utf-8") as f:
        reply = f.read()

    async def crown(websocket):
        auth = websocket.request.headers.get("Authorization")
        async for frame in websocket:
            message = json.loads(frame)
            with open(record_path, "a", encoding="utf-8") as record:
                record.write(json.dumps({"authorization": auth, "message": message}) + "\n")
            if message.get("type") == "handshake":
                await websocket.send(reply)

    async with serve(crown, "127.0.0.1", 0, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
