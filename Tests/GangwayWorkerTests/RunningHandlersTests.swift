import Foundation
import GangwayAMQPCore
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

/// Runs `body` on a thread of its own (not one of Swift's executors) and waits for it.
private func onNewThread(_ body: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        Thread {
            body()
            continuation.resume()
        }.start()
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

    @Test("waiting for idle returns only after every handler has finished", arguments: [false, true])
    func waitsForAll(immediately: Bool) async throws {
        let handlers = RunningHandlers()
        let gate = Gate()
        let finished = Atomic(0)
        for _ in 0 ..< 5 {
            handlers.start(immediately: immediately) {
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

    @Test("handlers that finish before start returns leave nothing behind", arguments: [false, true])
    func shortHandlers(immediately: Bool) async {
        let handlers = RunningHandlers()
        let finished = Counter()
        let starters = 4
        let perStarter = 2_500
        await withTaskGroup(of: Void.self) { group in
            for _ in 0 ..< starters {
                group.addTask {
                    for _ in 0 ..< perStarter {
                        handlers.start(immediately: immediately) { finished.value.add(1, ordering: .relaxed) }
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

    @Test("cancelling cancels the handlers running and those started afterwards", .timeLimit(.minutes(1)), arguments: [false, true])
    func cancelAll(immediately: Bool) async {
        let handlers = RunningHandlers()
        let cancelled = Atomic(0)
        for _ in 0 ..< 3 {
            handlers.start(immediately: immediately) {
                // Sleeps until cancelled; a handler that was not cancelled would hold the test.
                try? await Task.sleep(for: .seconds(3600))
                if Task.isCancelled { cancelled.add(1, ordering: .relaxed) }
            }
        }
        handlers.cancelAll()
        handlers.start(immediately: immediately) {
            if Task.isCancelled { cancelled.add(1, ordering: .relaxed) }
        }
        await handlers.waitUntilIdle()
        let cancelledCount = cancelled.load(ordering: .relaxed)
        #expect(cancelledCount == 4)
    }

    @Test("interrupting cancels the handlers running, not those started afterwards", .timeLimit(.minutes(1)), arguments: [false, true])
    func interruptRunning(immediately: Bool) async {
        let handlers = RunningHandlers()
        let cancelled = Atomic(0)
        let later = Atomic(0)
        for _ in 0 ..< 3 {
            handlers.start(immediately: immediately) {
                // Sleeps until cancelled; a handler that was not cancelled would hold the test.
                try? await Task.sleep(for: .seconds(3600))
                if Task.isCancelled { cancelled.add(1, ordering: .relaxed) }
            }
        }
        handlers.interruptRunning()
        handlers.start(immediately: immediately) {
            try? await Task.sleep(for: .milliseconds(20))
            if !Task.isCancelled { later.add(1, ordering: .relaxed) }
        }
        await handlers.waitUntilIdle()
        #expect(cancelled.load(ordering: .relaxed) == 3)
        #expect(later.load(ordering: .relaxed) == 1, "a handler started after the interruption runs to its end")
    }

    @Test("a run that ends after a later run of the same id started forgets only its own entry")
    func inFlightEntries() async {
        let inFlight = InFlight()
        let interrupted = Task<Void, any Error> { try await Task.sleep(for: .seconds(3600)) }
        let redelivered = Task<Void, any Error> { try await Task.sleep(for: .seconds(3600)) }
        let first = inFlight.insert("job-1", interrupted)
        let second = inFlight.insert("job-1", redelivered)
        inFlight.remove("job-1", first)
        inFlight.cancel("job-1")
        #expect(second.requested && !first.requested, "the cancel message reaches the run still going")
        #expect(redelivered.isCancelled && !interrupted.isCancelled)
        inFlight.remove("job-1", second)
        inFlight.cancel("job-1")
        #expect(inFlight.takeEarlyCancel("job-1"), "once both ended, a cancel waits for the next delivery")
        interrupted.cancel()
    }

    @Test("a cancel read again from the cancel log counts from when it was sent: one older than an hour is ignored")
    func cancelAge() {
        let inFlight = InFlight()
        let now = WireContract.epochMilliseconds()
        inFlight.cancel("stale", at: now - InFlight.earlyMilliseconds - 1_000)
        #expect(!inFlight.takeEarlyCancel("stale"))
        inFlight.cancel("recent", at: now - InFlight.earlyMilliseconds + 60_000)
        #expect(inFlight.takeEarlyCancel("recent"))
        #expect(!inFlight.takeEarlyCancel("recent"), "taken once")
        // A stale cancel does not reach a running task either.
        let running = Task<Void, any Error> { try await Task.sleep(for: .seconds(3600)) }
        let request = inFlight.insert("job-2", running)
        inFlight.cancel("job-2", at: now - InFlight.earlyMilliseconds - 1)
        #expect(!request.requested && !running.isCancelled)
        inFlight.cancel("job-2", at: now)
        #expect(request.requested && running.isCancelled)
    }

    @Test("an immediate handler runs on the caller's thread until it first suspends")
    func immediateRunsInline() async {
        let handlers = RunningHandlers()
        let gate = Gate()
        let thread = Mutex<(starter: pthread_t?, before: pthread_t?)>((nil, nil))
        let steps = Mutex<[String]>([])
        // Started from a thread of its own, as the connection's thread starts them.
        await onNewThread {
            thread.withLock { $0.starter = pthread_self() }
            handlers.start(immediately: true) {
                thread.withLock { $0.before = pthread_self() }
                steps.withLock { $0.append("before suspending") }
                await gate.wait()
                steps.withLock { $0.append("after suspending") }
            }
            steps.withLock { $0.append("start returned") }
        }
        let (starter, before) = thread.withLock { ($0.starter, $0.before) }
        #expect(starter != nil && before != nil && pthread_equal(starter!, before!) != 0)
        #expect(steps.withLock { $0 } == ["before suspending", "start returned"])
        #expect(handlers.count == 1)
        gate.open()
        await handlers.waitUntilIdle()
        #expect(steps.withLock { $0 } == ["before suspending", "start returned", "after suspending"])
        #expect(handlers.count == 0)
        #expect(handlers.bookkeeping == 0)
    }
}
