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
