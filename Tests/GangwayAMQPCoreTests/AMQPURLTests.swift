import GangwayAMQPCore
import Testing

@Suite("AMQP URLs")
struct AMQPURLTests {
    @Test("a full URL gives credentials, host, port, vhost and options")
    func full() throws {
        let u = try AMQPURL("amqps://user:p%40ss@broker.example:5999/my%2Fvhost?heartbeat=7&cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
        #expect(u.tls && u.host == "broker.example" && u.port == 5999)
        #expect(u.user == "user" && u.password == "p@ss")
        #expect(u.vhost == "my/vhost")
        #expect(u.heartbeatSeconds == 7)
        #expect(u.caCertFile == "/ca.pem" && u.certFile == "/c.pem" && u.keyFile == "/k.pem")
        #expect(u.verifyPeer)
        #expect(!u.description.contains("p@ss"))
    }

    @Test("defaults: guest/guest, port by scheme, vhost /")
    func defaults() throws {
        let a = try AMQPURL("amqp://localhost")
        #expect(a.port == 5672 && a.user == "guest" && a.password == "guest" && a.vhost == "/" && !a.tls)
        let s = try AMQPURL("amqps://h/")
        #expect(s.port == 5671 && s.vhost == "/")
        let v6 = try AMQPURL("amqp://[::1]:5680")
        #expect(v6.host == "::1" && v6.port == 5680)
    }

    @Test("verify_none turns off peer and host name checks")
    func verifyNone() throws {
        let u = try AMQPURL("amqps://h?verify=verify_none")
        #expect(!u.verifyPeer && !u.verifyHostname)
    }

    @Test("TLS options on a plain amqp:// URL are refused, not ignored", arguments: ["cacertfile=/ca.pem", "certfile=/c.pem&keyfile=/k.pem", "verify=verify_peer", "server_name_indication=disable"])
    func tlsOptionWithoutTLS(_ query: String) {
        #expect {
            try AMQPURL("amqp://h?\(query)")
        } throws: { error in
            let text = "\(error)"
            return text.contains("is a TLS option, but 'amqp://' connects without TLS: use amqps://")
                && text.contains("'\(query.prefix(while: { $0 != "=" }))'")
        }
    }

    @Test("a client certificate needs its key, and a key its certificate")
    func certificateAndKeyTogether() throws {
        #expect {
            try AMQPURL("amqps://h?certfile=/c.pem")
        } throws: { "\($0)" == "certfile needs keyfile too: the client certificate's private key" }
        #expect {
            try AMQPURL("amqps://h?keyfile=/k.pem")
        } throws: { "\($0)" == "keyfile needs certfile too: the client certificate" }
        let both = try AMQPURL("amqps://h?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
        #expect(both.files.map(\.option) == ["cacertfile", "certfile", "keyfile"])
        #expect(both.files.map(\.path) == ["/ca.pem", "/c.pem", "/k.pem"])
        #expect(try AMQPURL("amqps://h").files.isEmpty)
    }

    @Test("bad URLs are refused with a reason", arguments: [
        "localhost:5672", "http://h", "amqp://h:notaport", "amqp://h:70000", "amqp://h?heartbeat=-1", "amqp://h/%zz", "amqp://h?verify=maybe",
    ])
    func bad(_ text: String) {
        #expect(throws: AMQPURL.ParseError.self) { try AMQPURL(text) }
    }
}
