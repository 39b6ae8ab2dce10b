import CRabbitMQ
import Testing

/// rabbitmq-c reports a failed TLS call only as "a SSL error occurred"; the shim takes
/// OpenSSL's reasons for it out of the thread's error queue.
@Suite("TLS failure reasons")
struct TLSErrorsTests {
    @Test("a CA file that cannot be loaded leaves its reason, taken once, and a clear forgets it")
    func reasonsAreTakenOnce() throws {
        try withTLSSocket { socket in
            gw_tls_clear_errors()
            #expect(amqp_ssl_socket_set_cacert(socket, "/nonexistent/gangway-ca.pem") != AMQP_STATUS_OK.rawValue)
            let first = take()
            #expect(first.count >= 1)
            // OpenSSL's reason for a file it cannot open, whatever its wording in this version.
            #expect(!first.text.isEmpty && !first.text.hasPrefix("; ") && !first.text.hasSuffix("; "))
            #expect(take().count == 0, "the queue is drained by the first take")

            #expect(amqp_ssl_socket_set_cacert(socket, "/nonexistent/gangway-ca.pem") != AMQP_STATUS_OK.rawValue)
            gw_tls_clear_errors()
            #expect(take().count == 0, "a clear forgets what came before it")
        }
    }

    @Test("reasons longer than the buffer are cut, still terminated")
    func truncated() throws {
        try withTLSSocket { socket in
            gw_tls_clear_errors()
            _ = amqp_ssl_socket_set_cacert(socket, "/nonexistent/gangway-ca.pem")
            var small = [CChar](repeating: 0x7f, count: 8)
            let count = small.withUnsafeMutableBufferPointer { gw_tls_take_errors($0.baseAddress, $0.count) }
            #expect(count >= 1)
            #expect(small[7] == 0 && small.firstIndex(of: 0) != nil)
        }
    }

    /// A TLS socket on a connection of its own, never opened: enough to load files with.
    private func withTLSSocket(_ body: (OpaquePointer) throws -> Void) throws {
        let state = try #require(amqp_new_connection())
        defer { amqp_destroy_connection(state) }
        try body(try #require(amqp_ssl_socket_new(state)))
    }

    private func take() -> (count: Int, text: String) {
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = buffer.withUnsafeMutableBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { gw_tls_take_errors($0.baseAddress, $0.count) }
        }
        return (count, String(decoding: buffer.prefix(while: { $0 != 0 }), as: UTF8.self))
    }
}
