import GangwayCore
@testable import GangwayEdge
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@Suite("Event-stream tap: ready-made chunks below the HTTP/1 encoder")
struct EventStreamTapTests {
    static let chunkedHead = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    @Test("the framing comes from the response head; anything else says nothing")
    func framing() {
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: Self.chunkedHead)) == .chunked)
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")) == .other)
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")) == .other)
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n")) == .other)
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: "5\r\nhello\r\n")) == nil)
        #expect(EventStreamTap.framing(ofHead: ByteBuffer(string: "HTTP/1.1 200 OK\r\ntransfer-enc")) == nil)
    }

    @Test("after a chunked head, events go out as one chunk each, in order with what passed through, and each is confirmed written")
    func chunks() throws {
        let outbox = SSEOutbox(limit: 1 << 16)
        let tap = EventStreamTap(outbox: outbox)
        let channel = EmbeddedChannel(handler: tap)
        nonisolated(unsafe) let sink = tap  // the embedded channel runs on the test's thread
        let taken = Mutex<[Bool]>([])
        outbox.attach { bytes, receipt in
            taken.withLock { $0.append(sink.writeChunk(bytes, receipt: receipt)) }
        }
        // Nothing seen yet: the caller must write the usual way (and confirm the receipt).
        outbox.push(ByteBuffer(string: "early"))
        #expect(taken.withLock { $0 } == [false] && outbox.queuedBytes == 5)
        try channel.writeOutbound(IOData.byteBuffer(ByteBuffer(string: Self.chunkedHead)))
        outbox.push(ByteBuffer(string: "data: 0123456789abcdef\n\n"))
        outbox.push(ByteBuffer())
        #expect(taken.withLock { $0 } == [false, true, true])
        var out = ByteBuffer()
        while var part = try channel.readOutbound(as: IOData.self).flatMap({ if case .byteBuffer(let b) = $0 { b } else { nil } }) {
            out.writeBuffer(&part)
        }
        #expect(String(buffer: out) == Self.chunkedHead + "18\r\ndata: 0123456789abcdef\n\n\r\n")
        // Each chunk is confirmed written (the embedded channel has no buffered-bytes option,
        // so the chunk's confirmation comes from the empty write queued after it): only the
        // early bytes still count.
        #expect(outbox.queuedBytes == 5)
        _ = try channel.finish()
    }

    @Test("a response that is not chunked keeps its events on the usual path")
    func notChunked() throws {
        let tap = EventStreamTap(outbox: SSEOutbox(limit: 1024))
        let channel = EmbeddedChannel(handler: tap)
        try channel.writeOutbound(IOData.byteBuffer(ByteBuffer(string: "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")))
        let taken = tap.writeChunk(ByteBuffer(string: "data: x\n\n"), receipt: SSEOutbox.Receipt(outbox: SSEOutbox(limit: 1024), count: 0))
        #expect(!taken)
        _ = try channel.finish()
    }

    @Test("the client's FIN ends the stream")
    func inputClosed() throws {
        let outbox = SSEOutbox(limit: 1024)
        let channel = EmbeddedChannel(handler: EventStreamTap(outbox: outbox))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(outbox.end == .finished)
        _ = try channel.finish()
    }
}
