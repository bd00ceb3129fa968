"""Python `websockets` client with its default permessage-deflate offer.

Usage: ws_deflate_client.py URL SIZE...  Same protocol as
tests/node/ws_deflate_client.js: sends "offer?", then one highly compressible
text message of each SIZE, each waited for as an echo, then closes; prints one
JSON line {"extensions", "offer", "echoed", "close", "error"}.
"""

import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def main() -> None:
    url, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
    result = {"extensions": None, "offer": None, "echoed": [], "close": None, "error": None}
    try:
        with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
            result["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            ws.send("offer?")
            result["offer"] = json.loads(ws.recv(timeout=10))["offer"]
            for size in sizes:
                expected = ("edge-guard " * (size // 11 + 1))[:size]
                ws.send(expected)
                text = ws.recv(timeout=10)
                if text != expected:
                    result["error"] = f"echo mismatch: {len(text)} bytes"
                    break
                result["echoed"].append(size)
            ws.close(1000)
            result["close"] = 1000
    except ConnectionClosed as e:
        result["close"] = e.rcvd.code if e.rcvd else None
    except Exception as e:  # noqa: BLE001 - reported to the test
        result["error"] = repr(e)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
