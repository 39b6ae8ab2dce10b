import GangwayAMQPCore
import NIOCore
import Testing

@Suite("Reassembling content frames into messages")
struct ContentAssemblerTests {
    let deliver = ContentAssembler.DeliverMethod(consumerTag: "c1", deliveryTag: 7, redelivered: true, exchange: "x", routingKey: "k")

    @Test("method, header and several body frames make one delivery with the bytes in order")
    func multiFrame() throws {
        var a = ContentAssembler(generation: 3)
        try a.deliver(deliver)
        let check1 = try a.header(bodySize: 6, properties: AMQPProperties(correlationID: "abc")) == nil
        #expect(check1)
        let check2 = try withBytes([1, 2, 3]) { try a.body($0) } == nil
        #expect(check2)
        let out = try withBytes([4, 5, 6]) { try a.body($0) }
        guard case .delivery(let d)? = out else {
            Issue.record("expected a delivery")
            return
        }
        #expect(Array(d.body.readableBytesView) == [1, 2, 3, 4, 5, 6])
        #expect(d.properties.correlationID == "abc")
        #expect(d.deliveryTag == 7 && d.redelivered && d.generation == 3)
        #expect(a.isIdle)
    }

    @Test("an empty body completes at the header")
    func emptyBody() throws {
        var a = ContentAssembler(generation: 1)
        try a.deliver(deliver)
        guard case .delivery(let d)? = try a.header(bodySize: 0, properties: AMQPProperties()) else {
            Issue.record("expected a delivery")
            return
        }
        #expect(d.body.readableBytes == 0)
    }

    @Test("a return assembles into a returned message with its reply code")
    func returned() throws {
        var a = ContentAssembler(generation: 1)
        try a.returned(.init(replyCode: 312, replyText: "NO_ROUTE", exchange: "x", routingKey: "k"))
        let out = try a.header(bodySize: 0, properties: AMQPProperties(messageID: "m"))
        guard case .returned(let r, _)? = out else {
            Issue.record("expected a return")
            return
        }
        #expect(r.replyCode == 312 && r.properties.messageID == "m")
    }

    @Test("a body over the consumer's limit is read and dropped, and the next message is whole")
    func overLimit() throws {
        var a = ContentAssembler(generation: 2)
        try a.deliver(deliver, maxBodyBytes: 4)
        #expect(try a.header(bodySize: 5, properties: AMQPProperties(correlationID: "big")) == nil)
        #expect(try withBytes([1, 2, 3], { try a.body($0) }) == nil)
        #expect(!a.isIdle)
        #expect(throws: ContentAssembler.ProtocolError.self, "still more than announced") { try withBytes([1, 2, 3]) { try a.body($0) } }

        var b = ContentAssembler(generation: 2)
        try b.deliver(deliver, maxBodyBytes: 4)
        _ = try b.header(bodySize: 5, properties: AMQPProperties(correlationID: "big"))
        _ = try withBytes([1, 2, 3]) { try b.body($0) }
        let dropped = try #require(delivery(try withBytes([4, 5]) { try b.body($0) }), "the delivery, once its last body frame is read")
        #expect(dropped.body.readableBytes == 0)
        #expect(dropped.droppedBody == Delivery.DroppedBody(size: 5, limit: 4))
        #expect(dropped.properties.correlationID == "big" && dropped.deliveryTag == 7)
        #expect(b.isIdle)

        // At the limit the body is kept.
        try b.deliver(deliver, maxBodyBytes: 4)
        _ = try b.header(bodySize: 4, properties: AMQPProperties())
        let kept = try #require(delivery(try withBytes([9, 8, 7, 6]) { try b.body($0) }))
        #expect(Array(kept.body.readableBytesView) == [9, 8, 7, 6] && kept.droppedBody == nil)
        // A body too large for any buffer is a protocol error only when it would be kept.
        try b.deliver(deliver)
        #expect(throws: ContentAssembler.ProtocolError.self) { try b.header(bodySize: UInt64(Int32.max) + 1, properties: AMQPProperties()) }
        var c = ContentAssembler(generation: 1)
        try c.deliver(deliver, maxBodyBytes: 1 << 20)
        #expect(try c.header(bodySize: UInt64(Int32.max) + 1, properties: AMQPProperties()) == nil)
    }

    @Test("a return's body is kept: limits are for deliveries")
    func returnIgnoresLimits() throws {
        var a = ContentAssembler(generation: 1)
        try a.returned(.init(replyCode: 312, replyText: "NO_ROUTE", exchange: "x", routingKey: "k"))
        _ = try a.header(bodySize: 3, properties: AMQPProperties())
        let out = try withBytes([1, 2, 3]) { try a.body($0) }
        guard case .returned(_, let body)? = out else {
            Issue.record("expected a return")
            return
        }
        #expect(body.readableBytes == 3)
    }

    private func delivery(_ output: ContentAssembler.Output?) -> Delivery? {
        guard case .delivery(let d)? = output else { return nil }
        return d
    }

    @Test("frames out of sequence are protocol errors")
    func outOfSequence() throws {
        var a = ContentAssembler(generation: 1)
        #expect(throws: ContentAssembler.ProtocolError.self) { try a.header(bodySize: 1, properties: AMQPProperties()) }
        #expect(throws: ContentAssembler.ProtocolError.self) { try withBytes([1]) { try a.body($0) } }
        try a.deliver(deliver)
        #expect(throws: ContentAssembler.ProtocolError.self) { try a.deliver(deliver) }
        _ = try a.header(bodySize: 2, properties: AMQPProperties())
        #expect(throws: ContentAssembler.ProtocolError.self) { try withBytes([1, 2, 3]) { try a.body($0) } }
    }

    private func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { try body($0) }
    }
}
