#!/usr/bin/env python3
"""An lhttp client for byte streams (tcp:// and unix://), in the Python standard library only.

Frames are "<length>\\r\\n<message>\\r\\n" (docs/protocol.md, "Byte streams"); length 0 is a
heartbeat. Usage, as a demo: lhttp_stream.py HOST:PORT CHANNEL TEXT
subscribes to CHANNEL, publishes TEXT there and prints what arrives.
"""

import socket
import sys


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def send(self, command, headers=(), body=b""):
        head = "LHTTP/1.0 %s\r\n" % command
        head += "".join("%s:%s\r\n" % (name, value) for name, value in headers)
        message = head.encode() + b"\r\n" + body
        self.sock.sendall(b"%d\r\n%s\r\n" % (len(message), message))

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def recv(self):
        """The next message as (command, headers dict, body bytes); heartbeats are skipped."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            while b"\n" not in self.buf:
                self._fill()
            line, rest = self.buf.split(b"\n", 1)
            length = int(line.rstrip(b"\r"))
            while len(rest) < length:
                self._fill()
                rest = self.buf.split(b"\n", 1)[1]
            message, self.buf = rest[:length], rest[length:]
            if length == 0:
                continue  # a heartbeat: the server checks we are alive; any traffic answers it
            head, _, body = message.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(":", 1) for line in lines[1:])
            return lines[0].split(" ", 1)[1], headers, body


def main(address, channel, text):
    host, port = address.rsplit(":", 1)
    client = Client(socket.create_connection((host, int(port)), timeout=5))
    client.send("sub", [("subscribe", channel), ("request-id", "1")])
    command, headers, _ = client.recv()
    assert command == "ok", (command, headers)
    client.send("chat", [("publish", channel)], text.encode())
    command, headers, body = client.recv()
    print("%s: %s" % (headers["publish"], body.decode()))


if __name__ == "__main__":
    main(*sys.argv[1:4])
