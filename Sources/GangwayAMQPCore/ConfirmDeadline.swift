import Synchronization

/// The broker did not confirm a publish in time: it may be blocking publishers (a resource
/// alarm) or be out of reach. It may have the message, and confirm it later.
public struct ConfirmTimeout: PublishFailure, CustomStringConvertible, Equatable {
    public let timeout: Duration

    public init(timeout: Duration) {
        self.timeout = timeout
    }

    public var brokerMayHaveMessage: Bool { true }

    public var description: String {
        let ms = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        return "the broker did not confirm the message within \(ms) ms (is it blocking publishers, a resource alarm?); it may have it"
    }
}

/// Waits for a publish's confirm for at most `timeout`: whichever comes first, the outcome
/// or ``ConfirmTimeout``; a confirm that comes later is ignored.
/// - Parameter publish: sends the message and arranges for its callback to be called once
///   with the outcome; a throw means it was not sent.
public func confirmWithin<Failure: Error>(
    _ timeout: Duration,
    publish: (@escaping @Sendable (Result<PublishOutcome, Failure>) -> Void) throws -> Void
) async throws -> PublishOutcome {
    try await withCheckedThrowingContinuation { continuation in
        let waiter = ConfirmWaiter(continuation)
        do {
            try publish { result in waiter.finish(result.mapError { $0 as any Error }) }
        } catch {
            waiter.finish(.failure(error))
            return
        }
        waiter.startTimer(timeout)
    }
}

/// One continuation resumed once: by the outcome or by the timer, which the outcome cancels.
private final class ConfirmWaiter: Sendable {
    private struct State {
        var continuation: CheckedContinuation<PublishOutcome, any Error>?
        var timer: Task<Void, Never>?
        var finished = false
    }

    private let state: Mutex<State>

    init(_ continuation: CheckedContinuation<PublishOutcome, any Error>) {
        state = Mutex(State(continuation: continuation))
    }

    func startTimer(_ timeout: Duration) {
        let timer = Task { [self] in
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { finish(.failure(ConfirmTimeout(timeout: timeout))) }
        }
        let late = state.withLock { s -> Bool in
            if s.finished { return true }
            s.timer = timer
            return false
        }
        if late { timer.cancel() }
    }

    func finish(_ result: Result<PublishOutcome, any Error>) {
        let (continuation, timer) = state.withLock { s -> (CheckedContinuation<PublishOutcome, any Error>?, Task<Void, Never>?) in
            guard !s.finished else { return (nil, nil) }
            s.finished = true
            defer {
                s.continuation = nil
                s.timer = nil
            }
            return (s.continuation, s.timer)
        }
        timer?.cancel()
        continuation?.resume(with: result)
    }
}
