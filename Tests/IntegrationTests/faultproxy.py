"""A TCP proxy of the project's own, put between a gangway process and the broker to inject
network faults that `kill -STOP` and `rabbitmqctl` cannot: connections reset mid-stream, a
partition (nothing moves either way, nothing is closed, new connections are accepted and
left silent) that later heals, and a stream cut into pieces of a few bytes.

    proxy = FaultProxy(broker_port).start()
    url = proxy.url           # amqp://guest:guest@127.0.0.1:<proxy port>/
    proxy.cut()               # every open connection gets a TCP RST, both ways
    proxy.partition()         # bytes stop; proxy.heal() lets them move again
    proxy.pieces = 7          # forward in pieces of 1..7 bytes (0: as read)
"""
import random
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.pieces = 0
        self.accepted = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._links = []
        self._closed = False
        self._random = random.Random(7)

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def cut(self):
        """Resets every open connection: each side gets an RST, as when a middlebox drops them."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.reset()
        return len(links)

    def partition(self):
        """Stops every byte, both ways, on open and new connections; nothing is closed."""
        self._flowing.clear()

    def heal(self):
        self._flowing.set()

    def close(self):
        self._closed = True
        self.heal()
        self.cut()
        self.listener.close()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client):
        # In a partition the connection is accepted (as a broker's SYN-ACK may still have been
        # sent) but goes nowhere until it heals.
        self._flowing.wait()
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(client, server)
        with self._lock:
            self._links.append(link)
        threading.Thread(target=self._pump, args=(link, client, server), daemon=True).start()
        threading.Thread(target=self._pump, args=(link, server, client), daemon=True).start()

    def _pump(self, link, source, sink):
        try:
            while True:
                self._flowing.wait()
                data = source.recv(65536)
                if link.dead:
                    return
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                # Read before a partition began, held until it heals.
                self._flowing.wait()
                if self.pieces:
                    i = 0
                    while i < len(data):
                        n = self._random.randint(1, self.pieces)
                        sink.sendall(data[i:i + n])
                        i += n
                else:
                    sink.sendall(data)
        except OSError:
            # The other side went away, or cut() closed these sockets: close what is left.
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass


class Link:
    """A client's connection and the proxy's to the broker."""

    def __init__(self, client, server):
        self.sockets = (client, server)
        self.dead = False

    def reset(self):
        self.dead = True
        for s in self.sockets:
            try:
                # Linger 0: close sends an RST. Shutting the read side first wakes the pump
                # blocked in recv, which holds the socket open (no RST) until it returns.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
