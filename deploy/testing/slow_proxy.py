"""A TCP proxy in front of the local S3 endpoint that holds back every
request whose request line names a key under /slow/ (path-style addressing)
by --delay seconds. Warms of slow/ then take seconds instead of
milliseconds, so deploy/test.sh can cancel one, time one out and stop the
server while one runs, without racing it.

    python slow_proxy.py --listen PORT --upstream PORT [--delay 0.5]
"""

import argparse
import asyncio

SLOW = b"/slow/"


async def pipe(reader, writer, delay):
    try:
        while data := await reader.read(65536):
            # A request line is the first line of a chunk that starts a
            # request; the S3 SDK sends headers in one write.
            if delay and SLOW in data.split(b"\r\n", 1)[0]:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.5)
    args = ap.parse_args()

    async def handle(client_r, client_w):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", args.upstream)
        await asyncio.gather(pipe(client_r, up_w, args.delay), pipe(up_r, client_w, 0))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
