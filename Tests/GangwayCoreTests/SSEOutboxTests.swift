import GangwayCore
import NIOCore
import Dispatch
import NIOPosix
import Synchronization
import Testing

@Suite("SSE outbox: byte-bounded per-client queue")
struct SSEOutboxTests {
    func bytes(_ n: Int) -> ByteBuffer { ByteBuffer(repeating: UInt8(ascii: "x"), count: n) }

    @Test("everything queued is taken at once, in order")
    func batches() async {
        let box = SSEOutbox(limit: 1000)
        box.push(ByteBuffer(string: "a"))
        box.push(ByteBuffer(string: "b"))
        #expect(box.queuedBytes == 2)
        guard case .bytes(let batch) = await box.next() else {
            Issue.record("no bytes")
            return
        }
        #expect(batch.map { String(buffer: $0) } == ["a", "b"])
        #expect(box.queuedBytes == 0)
    }

    @Test("a waiting writer is woken by a push; finish ends after the queued bytes")
    func wake() async {
        let box = SSEOutbox(limit: 1000)
        async let first = box.next()
        try? await Task.sleep(for: .milliseconds(20))
        box.push(ByteBuffer(string: "late"))
        guard case .bytes(let batch) = await first else {
            Issue.record("no bytes")
            return
        }
        #expect(batch.map { String(buffer: $0) } == ["late"])
        box.push(ByteBuffer(string: "last"))
        box.finish()
        #expect(box.push(ByteBuffer(string: "after")) == false)
        guard case .bytes(let tail) = await box.next() else {
            Issue.record("queued bytes lost at finish")
            return
        }
        #expect(tail.map { String(buffer: $0) } == ["last"])
        guard case .end(.finished) = await box.next() else {
            Issue.record("no end")
            return
        }
    }

    @Test("passing the byte bound ends the outbox, drops its bytes and calls the overflow handler once")
    func overflow() async {
        let box = SSEOutbox(limit: 100)
        let calls = Mutex(0)
        box.onOverflow { calls.withLock { $0 += 1 } }
        #expect(box.push(bytes(60)))
        #expect(box.push(bytes(40)))
        #expect(box.push(bytes(1)) == false)
        #expect(box.push(bytes(1)) == false)
        #expect(box.end == .overflow && box.queuedBytes == 0)
        #expect(calls.withLock { $0 } == 1)
        guard case .end(.overflow) = await box.next() else {
            Issue.record("overflow not reported to the writer")
            return
        }
        let late = Mutex(0)
        box.onOverflow { late.withLock { $0 += 1 } }
        #expect(late.withLock { $0 } == 1)
    }

    @Test("one event larger than the bound is taken when nothing waits, queued or at the sink; anything behind it overflows")
    func largeEvent() async {
        let queued = SSEOutbox(limit: 10)
        #expect(queued.push(bytes(25)))
        #expect(queued.end == nil && queued.queuedBytes == 25)
        #expect(queued.push(bytes(1)) == false)
        #expect(queued.end == .overflow)

        let box = SSEOutbox(limit: 10)
        let receipts = Mutex<[SSEOutbox.Receipt]>([])
        box.attach { _, receipt in receipts.withLock { $0.append(receipt) } }
        #expect(box.push(bytes(25)), "a client with nothing waiting is not behind")
        receipts.withLock { $0.forEach { $0.confirm() } }
        #expect(box.push(bytes(25)), "written, so again nothing waits")
        #expect(box.push(bytes(1)) == false, "behind an unwritten event, the bound holds")
        #expect(box.end == .overflow)
    }

    @Test("the end handler runs once, with how the outbox ended, also when set after the end")
    func whenEnded() {
        let finished = SSEOutbox(limit: 100)
        let ends = Mutex<[SSEOutbox.End]>([])
        finished.whenEnded { end in ends.withLock { $0.append(end) } }
        #expect(ends.withLock { $0 }.isEmpty)
        finished.finish()
        finished.finish()
        #expect(ends.withLock { $0 } == [.finished])

        let overflowed = SSEOutbox(limit: 10)
        overflowed.whenEnded { end in ends.withLock { $0.append(end) } }
        #expect(overflowed.push(bytes(6)))
        #expect(overflowed.push(bytes(6)) == false)
        overflowed.finish()
        #expect(ends.withLock { $0 } == [.finished, .overflow])

        overflowed.whenEnded { end in ends.withLock { $0.append(end) } }
        #expect(ends.withLock { $0 } == [.finished, .overflow, .overflow])
    }

    @Test("heartbeats reach every open stream; closing an overflowed stream counts a cut-off")
    func registry() async {
        let clients = SSEClients(bufferLimit: 40)
        let a = clients.open()
        let b = clients.open()
        #expect(clients.count == 2)
        clients.heartbeat()
        guard case .bytes(let beat) = await a.next() else {
            Issue.record("no heartbeat")
            return
        }
        #expect(beat.map { String(buffer: $0) } == [": keep-alive\n\n"])
        clients.heartbeat()
        clients.heartbeat()
        #expect(b.end == .overflow)
        clients.close(a)
        clients.close(b)
        #expect(clients.count == 0 && clients.cutOff == 1)
    }

    @Test("an attached sink gets what was queued, then every push in order; unwritten bytes count toward the bound")
    func sink() async {
        let box = SSEOutbox(limit: 10)
        box.push(ByteBuffer(string: "ab"))
        let sent = Mutex<[String]>([])
        let receipts = Mutex<[SSEOutbox.Receipt]>([])
        box.attach { bytes, receipt in
            sent.withLock { $0.append(String(buffer: bytes)) }
            receipts.withLock { $0.append(receipt) }
        }
        #expect(box.push(ByteBuffer(string: "cd")))
        #expect(sent.withLock { $0 } == ["ab", "cd"])
        #expect(box.queuedBytes == 4)
        // Written: those bytes no longer count.
        receipts.withLock { $0.forEach { $0.confirm() } }
        #expect(box.queuedBytes == 0)
        #expect(box.push(ByteBuffer(string: "123456")))
        #expect(box.push(ByteBuffer(string: "789")))
        #expect(box.push(ByteBuffer(string: "XY")) == false)
        #expect(box.end == .overflow)
        guard case .end(.overflow) = await box.next() else {
            Issue.record("overflow not reported to the writer")
            return
        }
    }

    @Test("attached on a loop: queued bytes and fanned-out pushes reach the sink there, in order, and never the writer")
    func loopAttach() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let box = SSEOutbox(limit: 1000)
        let sent = Mutex<[String]>([])
        // Holds the loop until the pushes below are queued behind the attach.
        let gate = DispatchSemaphore(value: 0)
        loop.execute { gate.wait() }
        box.push(ByteBuffer(string: "1"))
        box.attach(on: loop) { bytes, receipt in
            sent.withLock { $0.append(String(buffer: bytes)) }
            receipt.confirm()
        }
        SSEOutbox.fanOut(ByteBuffer(string: "2"), to: [box])
        box.push(ByteBuffer(string: "3"))
        #expect(sent.withLock { $0 }.isEmpty)
        gate.signal()
        try await loop.submit {}.get()
        #expect(sent.withLock { $0 } == ["1", "2", "3"])
        SSEOutbox.fanOut(ByteBuffer(string: "4"), to: [box], thenFinish: true)
        try await loop.submit {}.get()
        #expect(sent.withLock { $0 } == ["1", "2", "3", "4"])
        guard case .end(.finished) = await box.next() else {
            Issue.record("the writer got bytes meant for the sink")
            return
        }
        #expect(box.queuedBytes == 0)
        try await group.shutdownGracefully()
    }

    @Test("a fan-out plan groups outboxes by the loop each is attached to; an unattached one makes it unsettled and still gets the push")
    func fanOutPlan() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = [group.next(), group.next()]
        let sent = Mutex<[String: [String]]>([:])
        var attached: [SSEOutbox] = []
        for (i, name) in ["a", "b", "c"].enumerated() {
            let box = SSEOutbox(limit: 1000)
            let loop = loops[i % 2]
            box.attach(on: loop) { bytes, receipt in
                #expect(loop.inEventLoop)
                sent.withLock { $0[name, default: []].append(String(buffer: bytes)) }
                receipt.confirm()
            }
            attached.append(box)
        }
        let plan = SSEOutbox.FanOutPlan(attached)
        #expect(plan.isSettled && plan.count == 3)
        for event in ["1", "2"] { SSEOutbox.fanOut(ByteBuffer(string: event), along: plan) }
        let loose = SSEOutbox(limit: 1000)
        let mixed = SSEOutbox.FanOutPlan([attached[0], loose])
        #expect(!mixed.isSettled && mixed.count == 2)
        SSEOutbox.fanOut(ByteBuffer(string: "3"), along: mixed, thenFinish: true)
        for loop in loops { try await loop.submit {}.get() }
        #expect(sent.withLock { $0 } == ["a": ["1", "2", "3"], "b": ["1", "2"], "c": ["1", "2"]])
        #expect(attached[0].end == .finished && attached[1].end == nil)
        guard case .bytes(let queued) = await loose.next() else {
            Issue.record("the unattached outbox did not get the push")
            return
        }
        #expect(queued.map { String(buffer: $0) } == ["3"])
        #expect(loose.end == .finished)
        try await group.shutdownGracefully()
    }
}
