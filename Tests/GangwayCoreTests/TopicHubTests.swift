import GangwayAMQPCore
@testable import GangwayCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite("Topic hub: reference-counted bindings, fan-out, resume")
struct TopicHubTests {
    final class RecordingBinder: TopicBinder {
        let calls = Mutex<[String]>([])
        let failing = Mutex(false)
        func bind(_ pattern: TopicPattern) async throws {
            if failing.withLock({ $0 }) { throw CancellationError() }
            calls.withLock { $0.append("bind \(pattern)") }
        }
        func unbind(_ pattern: TopicPattern) async throws {
            calls.withLock { $0.append("unbind \(pattern)") }
        }
        var log: [String] { calls.withLock { $0 } }
    }

    func patterns(_ texts: String...) -> [TopicPattern] { texts.map { TopicPattern($0)! } }

    /// Runs `body` with the hub's operation loop running.
    func withHub(linger: Int64 = 0, history: Int = 100, historyBytes: Int = 1 << 20, _ body: (TopicHub, RecordingBinder) async throws -> Void) async throws {
        let binder = RecordingBinder()
        let hub = TopicHub(binder: binder, instanceID: "e1", configuration: .init(historyLimit: history, historyByteLimit: historyBytes, lingerMilliseconds: linger))
        let runner = Task { await hub.run() }
        defer { runner.cancel() }
        try await body(hub, binder)
    }

    /// What is queued in an outbox now (never waits).
    func text(_ outbox: SSEOutbox) async -> String {
        guard outbox.queuedBytes > 0, case .bytes(let buffers) = await outbox.next() else { return "" }
        return buffers.map { String(buffer: $0) }.joined()
    }

    @Test("one binding per pattern however many subscribe; events reach only matching subscribers")
    func fanOut() async throws {
        try await withHub(linger: 60_000) { hub, binder in
            let a = SSEOutbox(limit: 1 << 20)
            let b = SSEOutbox(limit: 1 << 20)
            let c = SSEOutbox(limit: 1 << 20)
            _ = try await hub.subscribe(patterns("orders.*"), lastEventID: nil, outbox: a)
            _ = try await hub.subscribe(patterns("orders.*", "audit.#"), lastEventID: nil, outbox: b)
            _ = try await hub.subscribe(patterns("audit.#"), lastEventID: nil, outbox: c)
            #expect(binder.log == ["bind orders.*", "bind audit.#"])
            hub.deliver(topic: "orders.created", messageID: "m1", contentType: "application/json", body: ByteBuffer(string: #"{"n":1}"#))
            hub.deliver(topic: "audit.login.ok", messageID: "m2", contentType: "text/plain", body: ByteBuffer(string: "x"))
            hub.deliver(topic: "other", messageID: "m3", contentType: nil, body: ByteBuffer(string: "y"))
            #expect(await text(a) == "id: m1\ndata: {\"topic\":\"orders.created\",\"data\":{\"n\":1}}\n\n")
            #expect(await text(b) == "id: m1\ndata: {\"topic\":\"orders.created\",\"data\":{\"n\":1}}\n\nid: m2\ndata: {\"topic\":\"audit.login.ok\",\"data\":\"x\"}\n\n")
            #expect(await text(c) == "id: m2\ndata: {\"topic\":\"audit.login.ok\",\"data\":\"x\"}\n\n")
        }
    }

    @Test("subscribers attached to loops: events reach those subscribed when each was delivered, however the fan-out is planned")
    func plannedFanOut() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let sent = Mutex<[String: [String]]>([:])
        func attached(_ name: String) -> SSEOutbox {
            let outbox = SSEOutbox(limit: 1 << 20)
            outbox.attach(on: group.next()) { bytes, receipt in
                let id = String(buffer: bytes).split(separator: "\n")[0]
                sent.withLock { $0[name, default: []].append(String(id)) }
                receipt.confirm()
            }
            return outbox
        }
        func deliver(_ hub: TopicHub, _ id: String) async throws {
            hub.deliver(topic: "t.x", messageID: id, contentType: "text/plain", body: ByteBuffer(string: id))
            // Fanned out on the loops: wait until each has written.
            for _ in 0..<2 { try await group.next().submit {}.get() }
        }
        try await withHub(linger: 60_000) { hub, _ in
            let a = try await hub.subscribe(patterns("t.*"), lastEventID: nil, outbox: attached("a"))
            try await deliver(hub, "e1")
            try await deliver(hub, "e2")
            let b = try await hub.subscribe(patterns("t.*"), lastEventID: nil, outbox: attached("b"))
            try await deliver(hub, "e3")
            hub.unsubscribe(a.id)
            try await deliver(hub, "e4")
            hub.unsubscribe(b.id)
            try await deliver(hub, "e5")
            _ = try await hub.subscribe(patterns("t.*", "t.x"), lastEventID: nil, outbox: attached("c"))
            try await deliver(hub, "e6")
        }
        #expect(sent.withLock { $0 } == ["a": ["id: e1", "id: e2", "id: e3"], "b": ["id: e3", "id: e4"], "c": ["id: e6"]])
        try await group.shutdownGracefully()
    }

    @Test("the last subscriber leaving unbinds after the linger time, not before")
    func linger() async throws {
        try await withHub(linger: 1000) { hub, binder in
            let s1 = try await hub.subscribe(patterns("a.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024))
            let s2 = try await hub.subscribe(patterns("a.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024))
            hub.unsubscribe(s1.id)
            let now = WireContract.epochMilliseconds()
            await hub.sweep(now: now + 5000)
            #expect(hub.boundPatterns == ["a.*"])
            hub.unsubscribe(s2.id)
            await hub.sweep(now: now + 500)
            #expect(hub.boundPatterns == ["a.*"])
            await hub.sweep(now: now + 5000)
            #expect(hub.boundPatterns.isEmpty)
            #expect(binder.log == ["bind a.*", "unbind a.*"])
        }
    }

    @Test("a failed bind subscribes nothing and the error reaches the caller")
    func bindFailure() async throws {
        try await withHub { hub, binder in
            binder.failing.withLock { $0 = true }
            await #expect(throws: (any Error).self) {
                try await hub.subscribe(patterns("a.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024))
            }
            #expect(hub.subscriberCount == 0 && hub.boundPatterns.isEmpty)
        }
    }

    @Test("resume replays exactly what followed the last id; an unknown id, or one from before the binding, gets a reset")
    func resume() async throws {
        try await withHub(linger: 60_000) { hub, _ in
            let first = try await hub.subscribe(patterns("t.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1 << 20))
            for i in 1...5 { hub.deliver(topic: "t.x", messageID: "e\(i)", contentType: "text/plain", body: ByteBuffer(string: "\(i)")) }
            hub.unsubscribe(first.id)
            let again = try await hub.subscribe(patterns("t.*"), lastEventID: "e3", outbox: SSEOutbox(limit: 1 << 20))
            #expect(!again.reset)
            #expect(again.replay.map { String(buffer: $0) } == ["e4", "e5"].enumerated().map { "id: \($1)\ndata: {\"topic\":\"t.x\",\"data\":\"\($0 + 4)\"}\n\n" })
            let unknown = try await hub.subscribe(patterns("t.*"), lastEventID: "nope", outbox: SSEOutbox(limit: 1024))
            #expect(unknown.reset && unknown.replay.isEmpty)
            // u.* was not bound when e2 went by: what it might have missed is unknown.
            let widened = try await hub.subscribe(patterns("t.*", "u.*"), lastEventID: "e2", outbox: SSEOutbox(limit: 1024))
            #expect(widened.reset)
        }
    }

    @Test("a lost connection tells every subscriber with a reset, and a resume from before the loss gets a reset; from after it, the events that followed")
    func connectionLost() async throws {
        try await withHub(linger: 60_000) { hub, _ in
            let live = SSEOutbox(limit: 1 << 20)
            _ = try await hub.subscribe(patterns("t.*"), lastEventID: nil, outbox: live)
            for i in 1...2 { hub.deliver(topic: "t.x", messageID: "e\(i)", contentType: "text/plain", body: ByteBuffer(string: "\(i)")) }
            hub.connectionLost()
            for i in 3...4 { hub.deliver(topic: "t.x", messageID: "e\(i)", contentType: "text/plain", body: ByteBuffer(string: "\(i)")) }
            let seen = await text(live)
            #expect(seen.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { $0.components(separatedBy: "\n")[0] } == ["id: e1", "id: e2", "event: reset", "id: e3", "id: e4"], "\(seen)")
            #expect(seen.contains("event: reset\ndata: {\"reason\":\"the edge lost its connection to the broker; events published until it is back may be missing\"}\n\n"))
            for before in ["e1", "e2"] {
                let resumed = try await hub.subscribe(patterns("t.*"), lastEventID: before, outbox: SSEOutbox(limit: 1024))
                #expect(resumed.reset && resumed.replay.isEmpty, "after \(before)")
            }
            let after = try await hub.subscribe(patterns("t.*"), lastEventID: "e3", outbox: SSEOutbox(limit: 1024))
            #expect(!after.reset)
            #expect(after.replay.map { String(buffer: $0) } == ["id: e4\ndata: {\"topic\":\"t.x\",\"data\":\"4\"}\n\n"])
        }
    }

    @Test("history is bounded in count; ids missing or repeated get an edge id")
    func historyBound() async throws {
        try await withHub(history: 2) { hub, _ in
            _ = try await hub.subscribe(patterns("#"), lastEventID: nil, outbox: SSEOutbox(limit: 1 << 20))
            hub.deliver(topic: "a", messageID: nil, contentType: nil, body: ByteBuffer(string: "1"))
            hub.deliver(topic: "a", messageID: "bad id", contentType: nil, body: ByteBuffer(string: "2"))
            hub.deliver(topic: "a", messageID: "m", contentType: nil, body: ByteBuffer(string: "3"))
            hub.deliver(topic: "a", messageID: "m", contentType: nil, body: ByteBuffer(string: "4"))
            let gone = try await hub.subscribe(patterns("#"), lastEventID: "e1-1", outbox: SSEOutbox(limit: 1024))
            #expect(gone.reset)
            let kept = try await hub.subscribe(patterns("#"), lastEventID: "m", outbox: SSEOutbox(limit: 1024))
            #expect(!kept.reset && kept.replay.map { String(buffer: $0) } == ["id: e1-4\ndata: {\"topic\":\"a\",\"data\":4}\n\n"])
        }
    }

    @Test("history is bounded in bytes: the oldest events go first, the newest is kept whatever its size")
    func historyByteBound() async throws {
        try await withHub(historyBytes: 300) { hub, _ in
            _ = try await hub.subscribe(patterns("#"), lastEventID: nil, outbox: SSEOutbox(limit: 1 << 20))
            // Each event encodes to 138 bytes (id, data, the topic envelope): two fit, a third pushes the first out.
            for n in 1...3 {
                hub.deliver(topic: "a", messageID: "m\(n)", contentType: nil, body: ByteBuffer(string: "\"" + String(repeating: "x", count: 100) + "\""))
            }
            #expect(hub.historyUsage.events == 2 && hub.historyUsage.bytes == 276)
            #expect(try await hub.subscribe(patterns("#"), lastEventID: "m1", outbox: SSEOutbox(limit: 1 << 20)).reset)
            #expect(try await hub.subscribe(patterns("#"), lastEventID: "m2", outbox: SSEOutbox(limit: 1 << 20)).replay.count == 1)
            hub.deliver(topic: "a", messageID: "big", contentType: nil, body: ByteBuffer(string: "\"" + String(repeating: "y", count: 1000) + "\""))
            #expect(hub.historyUsage.events == 1 && hub.historyUsage.bytes > 1000)
        }
    }

    struct StuckBinder: TopicBinder {
        func bind(_ pattern: TopicPattern) async throws { try await Task.sleep(for: .seconds(60)) }
        func unbind(_ pattern: TopicPattern) async throws {}
    }

    @Test("subscribers waiting for a bind fail when the hub stops, as does a later one; none waits forever")
    func stop() async throws {
        let hub = TopicHub(binder: StuckBinder(), instanceID: "e1")
        let runner = Task { await hub.run() }
        let first = Task { try await hub.subscribe(patterns("a.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024)) }
        let second = Task { try await hub.subscribe(patterns("b.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024)) }
        try await Task.sleep(for: .milliseconds(100))
        runner.cancel()
        await runner.value
        await #expect(throws: (any Error).self) { try await first.value }
        await #expect(throws: (any Error).self) { try await second.value }
        await #expect(throws: (any Error).self) {
            try await hub.subscribe(patterns("c.*"), lastEventID: nil, outbox: SSEOutbox(limit: 1024))
        }
        #expect(hub.subscriberCount == 0)
    }
}
