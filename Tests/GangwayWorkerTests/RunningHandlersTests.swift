import Synchronization
import Testing

@testable import GangwayWorker

/// A latch that handlers wait on until the test opens it.
private final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLock { s -> Bool in
                if s.open { return true }
                s.waiters.append(continuation)
                return false
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

@Suite("Worker handlers")
struct RunningHandlersTests {
    @Test("waiting for idle returns at once when nothing runs")
    func idleAtOnce() async {
        let handlers = RunningHandlers()
        await handlers.waitUntilIdle()
        #expect(handlers.count == 0)
    }

    @Test("waiting for idle returns only after every handler has finished")
    func waitsForAll() async throws {
        let handlers = RunningHandlers()
        let gate = Gate()
        let finished = Atomic(0)
        for _ in 0 ..< 5 {
            handlers.start {
                await gate.wait()
                finished.add(1, ordering: .relaxed)
            }
        }
        #expect(handlers.count == 5)
        let idle = Atomic(false)
        let waiter = Task {
            await handlers.waitUntilIdle()
            idle.store(true, ordering: .relaxed)
        }
        try await Task.sleep(for: .milliseconds(50))
        let idleEarly = idle.load(ordering: .relaxed)
        #expect(!idleEarly)
        gate.open()
        await waiter.value
        let finishedCount = finished.load(ordering: .relaxed)
        #expect(finishedCount == 5)
        #expect(handlers.count == 0)
    }

    @Test("handlers that finish before start returns leave nothing behind")
    func shortHandlers() async {
        let handlers = RunningHandlers()
        let finished = Counter()
        let starters = 4
        let perStarter = 2_500
        await withTaskGroup(of: Void.self) { group in
            for _ in 0 ..< starters {
                group.addTask {
                    for _ in 0 ..< perStarter {
                        handlers.start { finished.value.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        await handlers.waitUntilIdle()
        let finishedCount = finished.value.load(ordering: .relaxed)
        #expect(finishedCount == starters * perStarter)
        #expect(handlers.count == 0)
        #expect(handlers.bookkeeping == 0)
    }

    @Test("cancelling cancels the handlers running and those started afterwards", .timeLimit(.minutes(1)))
    func cancelAll() async {
        let handlers = RunningHandlers()
        let cancelled = Atomic(0)
        for _ in 0 ..< 3 {
            handlers.start {
                // Sleeps until cancelled; a handler that was not cancelled would hold the test.
                try? await Task.sleep(for: .seconds(3600))
                if Task.isCancelled { cancelled.add(1, ordering: .relaxed) }
            }
        }
        handlers.cancelAll()
        handlers.start {
            if Task.isCancelled { cancelled.add(1, ordering: .relaxed) }
        }
        await handlers.waitUntilIdle()
        let cancelledCount = cancelled.load(ordering: .relaxed)
        #expect(cancelledCount == 4)
    }
}
