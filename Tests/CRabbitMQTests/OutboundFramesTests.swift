import CRabbitMQ
import Foundation
import Testing

/// The frames the connection thread gathers itself must be byte for byte what rabbitmq-c
/// writes for the same command: each case below has rabbitmq-c write to one end of a socket
/// pair and compares what arrives at the other with the gathered buffer.
@Suite("Outbound frames gathered for one write")
struct OutboundFramesTests {
    @Test("a publish with properties and headers is what amqp_basic_publish writes")
    func publish() throws {
        try withMessage(body: Array("0123456789abcdef".utf8)) { message in
            try expectSameBytes(message: message)
        }
    }

    @Test("a publish without a body is a method and a header frame, as rabbitmq-c writes it")
    func emptyBody() throws {
        try withMessage(body: []) { message in
            try expectSameBytes(message: message)
        }
    }

    @Test("a body larger than a frame is split into frames of at most frame_max bytes")
    func bodyOverSeveralFrames() throws {
        let body = (0..<150_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try withMessage(body: body) { message in
            // 65 536-byte frames carry 65 528 body bytes each: three body frames per message.
            let written = try expectSameBytes(message: message)
            #expect(written.count > 2 * (150_000 + 3 * 8))
        }
    }

    @Test("acks and rejects are what amqp_basic_ack and amqp_basic_reject write")
    func ackAndReject() throws {
        let expected = try rabbitmqCWrites { state in
            var rc = amqp_basic_ack(state, 1, 42, 1)
            if rc == AMQP_STATUS_OK.rawValue { rc = amqp_basic_reject(state, 1, 43, 0) }
            return rc
        }
        var out = gw_outbuf_t()
        defer { gw_outbuf_free(&out) }
        var ack = amqp_basic_ack_t(delivery_tag: 42, multiple: 1)
        #expect(gw_outbuf_append_method(&out, 1, GW_BASIC_ACK, &ack, Int(frameMax)) == AMQP_STATUS_OK.rawValue)
        var reject = amqp_basic_reject_t(delivery_tag: 43, requeue: 0)
        #expect(gw_outbuf_append_method(&out, 1, GW_BASIC_REJECT, &reject, Int(frameMax)) == AMQP_STATUS_OK.rawValue)
        expectSameBytes(bytes(of: out), expected)
        #expect(!expected.isEmpty)
    }

    @Test("properties too large for a frame fail the message and leave what was gathered before it")
    func oversizedProperties() throws {
        var out = gw_outbuf_t()
        defer { gw_outbuf_free(&out) }
        var ack = amqp_basic_ack_t(delivery_tag: 1, multiple: 0)
        #expect(gw_outbuf_append_method(&out, 1, GW_BASIC_ACK, &ack, 4096) == AMQP_STATUS_OK.rawValue)
        let before = bytes(of: out)
        try withMessage(body: [1, 2, 3], headerValue: String(repeating: "v", count: 5000)) { message in
            var properties = message.properties
            let rc = gw_outbuf_append_publish(
                &out, 1, message.exchange, message.routingKey, 1, &properties, message.body, 4096
            )
            #expect(rc < 0)
        }
        expectSameBytes(bytes(of: out), before)
    }

    @Test("a write larger than the socket's buffer goes out whole on a non-blocking socket")
    func sendAll() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        #expect(fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK) == 0)
        let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let received = ReceivedBytes()
        let reader = Thread { [reader = fds[1]] in received.readAll(from: reader) }
        reader.start()
        let rc = payload.withUnsafeBufferPointer { gw_send_all(fds[0], $0.baseAddress, $0.count) }
        #expect(rc == 0)
        close(fds[0])
        received.waitUntilClosed()
        expectSameBytes(received.bytes, payload)
    }

    @Test("a write to a peer that went away fails with its errno")
    func sendToClosedPeer() {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]) }
        close(fds[1])
        let payload: [UInt8] = [1, 2, 3]
        let rc = payload.withUnsafeBufferPointer { gw_send_all(fds[0], $0.baseAddress, $0.count) }
        #expect(rc == -EPIPE)
    }
}

// MARK: Helpers

/// A publish's arguments, pointing at C strings that live for the closure's duration.
private struct Message {
    var exchange: amqp_bytes_t
    var routingKey: amqp_bytes_t
    var properties: amqp_basic_properties_t
    var body: amqp_bytes_t
}

private func withMessage(body: [UInt8], headerValue: String = "POST", _ run: (Message) throws -> Void) throws {
    var strings: [UnsafeMutablePointer<CChar>] = []
    defer { strings.forEach { free($0) } }
    func c(_ s: String) -> amqp_bytes_t {
        let p = strdup(s)!
        strings.append(p)
        return amqp_cstring_bytes(p)
    }
    let entries = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: 2)
    defer { entries.deallocate() }
    var method = amqp_field_value_t()
    method.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
    method.value.bytes = c(headerValue)
    entries[0] = amqp_table_entry_t(key: c("x-method"), value: method)
    var deadline = amqp_field_value_t()
    deadline.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
    deadline.value.i64 = 1_764_000_000_000
    entries[1] = amqp_table_entry_t(key: c("x-deadline"), value: deadline)

    var properties = amqp_basic_properties_t()
    properties._flags = GW_FLAG_CONTENT_TYPE | GW_FLAG_HEADERS | GW_FLAG_DELIVERY_MODE | GW_FLAG_CORRELATION_ID
        | GW_FLAG_REPLY_TO | GW_FLAG_EXPIRATION | GW_FLAG_MESSAGE_ID | GW_FLAG_TIMESTAMP | GW_FLAG_APP_ID
    properties.content_type = c("text/plain")
    properties.headers = amqp_table_t(num_entries: 2, entries: entries)
    properties.delivery_mode = 1
    properties.correlation_id = c("edge-7")
    properties.reply_to = c("gangway.reply.test")
    properties.expiration = c("5000")
    properties.message_id = c("edge-7")
    properties.timestamp = 1_764_000_000
    properties.app_id = c("gangway")
    try body.withUnsafeBufferPointer { body in
        let message = Message(
            exchange: c("gangway.rpc"), routingKey: c("demo.echo"), properties: properties,
            body: amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
        )
        try run(message)
    }
}

/// Checks that the gathered frames of `message` equal what `amqp_basic_publish` writes for
/// it, twice in a row (frames follow each other in one buffer); returns what was written.
@discardableResult
private func expectSameBytes(message: Message) throws -> [UInt8] {
    var properties = message.properties
    let expected = try rabbitmqCWrites { state in
        var rc = amqp_basic_publish(state, 1, message.exchange, message.routingKey, 1, 0, &properties, message.body)
        if rc == AMQP_STATUS_OK.rawValue {
            rc = amqp_basic_publish(state, 1, message.exchange, message.routingKey, 1, 0, &properties, message.body)
        }
        return rc
    }
    var out = gw_outbuf_t()
    defer { gw_outbuf_free(&out) }
    for _ in 0..<2 {
        let rc = gw_outbuf_append_publish(
            &out, 1, message.exchange, message.routingKey, 1, &properties, message.body, Int(frameMax)
        )
        #expect(rc == AMQP_STATUS_OK.rawValue)
    }
    expectSameBytes(bytes(of: out), expected)
    #expect(expected.count > 2 * message.body.len)
    return expected
}

/// rabbitmq-c's frame size on a new connection (it can be tuned only as part of logging in).
private let frameMax: Int32 = 65_536

/// What rabbitmq-c writes for `commands` on a new connection, read from the other end of a
/// socket pair (on another thread: more than the socket's buffer may be written).
private func rabbitmqCWrites(_ commands: (amqp_connection_state_t) -> Int32) throws -> [UInt8] {
    var fds: [Int32] = [0, 0]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    defer { close(fds[1]) }
    let received = ReceivedBytes()
    let reader = Thread { [reader = fds[1]] in received.readAll(from: reader) }
    reader.start()
    var rc: Int32 = -1
    if let state = amqp_new_connection() {
        if let socket = amqp_tcp_socket_new(state) {
            amqp_tcp_socket_set_sockfd(socket, fds[0])
            rc = commands(state)
        } else {
            close(fds[0])
        }
        amqp_destroy_connection(state)  // closes fds[0] with the socket: the reader sees the end
    } else {
        close(fds[0])
    }
    received.waitUntilClosed()
    try #require(rc == AMQP_STATUS_OK.rawValue)
    return received.bytes
}

/// Says where two byte strings first differ, rather than printing both.
private func expectSameBytes(_ actual: [UInt8], _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
    let common = min(actual.count, expected.count)
    let firstDifference = (0..<common).first { actual[$0] != expected[$0] }
    #expect(
        firstDifference == nil && actual.count == expected.count,
        "\(actual.count) bytes against \(expected.count) expected; first difference at \(firstDifference.map(String.init) ?? "the end")",
        sourceLocation: sourceLocation
    )
}

private func bytes(of out: gw_outbuf_t) -> [UInt8] {
    guard out.len > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: out.bytes, count: out.len))
}

/// Bytes read on another thread until the writer closes its end.
private final class ReceivedBytes: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private(set) var bytes: [UInt8] = []

    func readAll(from fd: Int32) {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        done.signal()
    }

    func waitUntilClosed() {
        done.wait()
    }
}
