/// The life of one AMQP connection: connect, serve, lose it, back off, reconnect, shut down.
///
/// The owner thread feeds events and runs the returned action; the machine never sleeps or
/// touches a socket. Backoff is exponential with "equal jitter": half the step is fixed, half is
/// random, so a fleet of edges that lost the same broker do not reconnect in lock step. The
/// random fraction comes in with the event so that tests are deterministic.
public struct ConnectionStateMachine: Sendable {
    public struct Backoff: Sendable, Hashable {
        public var initialMilliseconds: Int
        public var maximumMilliseconds: Int
        public var multiplier: Int

        public init(initialMilliseconds: Int = 100, maximumMilliseconds: Int = 5_000, multiplier: Int = 2) {
            self.initialMilliseconds = initialMilliseconds
            self.maximumMilliseconds = maximumMilliseconds
            self.multiplier = multiplier
        }

        /// The delay before attempt number `attempt` (0-based), given a random fraction in 0...1.
        public func delay(attempt: Int, random: Double) -> Int {
            var step = initialMilliseconds
            for _ in 0..<min(attempt, 30) {
                step = min(maximumMilliseconds, step * multiplier)
            }
            let fraction = min(1, max(0, random))
            return step / 2 + Int(Double(step - step / 2) * fraction)
        }
    }

    public enum State: Sendable, Equatable {
        case idle
        case connecting(attempt: Int)
        case connected(generation: UInt64)
        case backingOff(attempt: Int)
        case closed
    }

    public enum Action: Sendable, Equatable {
        /// Open the socket, log in, open channels.
        case connect
        /// Declare topology, reopen consumers: a new incarnation is up.
        case openSession(generation: UInt64)
        /// Fail whatever was in flight on the lost connection, then wait this long and connect.
        case failInFlightAndReconnect(afterMilliseconds: Int)
        /// Wait this long, then connect.
        case reconnect(afterMilliseconds: Int)
        /// Close the connection (if any) and stop the owner thread.
        case close
        case none
    }

    public private(set) var state: State = .idle
    private var generation: UInt64 = 0
    private let backoff: Backoff
    /// Connections in a row whose session could not be opened (a topology declaration the
    /// broker refuses, a consumer it will not start): each waits a step longer than the one
    /// before, or they would reconnect at the first step's pace for as long as the cause lasts.
    private var sessionFailuresInARow = 0

    public init(backoff: Backoff = Backoff()) {
        self.backoff = backoff
    }

    public var isConnected: Bool {
        if case .connected = state { return true }
        return false
    }

    public mutating func start() -> Action {
        guard case .idle = state else { return .none }
        state = .connecting(attempt: 0)
        return .connect
    }

    public mutating func connectSucceeded() -> Action {
        guard case .connecting = state else { return .none }
        generation += 1
        state = .connected(generation: generation)
        return .openSession(generation: generation)
    }

    public mutating func connectFailed(random: Double) -> Action {
        guard case .connecting(let attempt) = state else { return .none }
        state = .backingOff(attempt: attempt + 1)
        return .reconnect(afterMilliseconds: backoff.delay(attempt: attempt, random: random))
    }

    /// The session is up: topology declared, consumers started. A later loss backs off from
    /// the first step again.
    public mutating func sessionOpened() {
        guard case .connected = state else { return }
        sessionFailuresInARow = 0
    }

    /// The connection came up but its session could not be opened. The backoff grows with each
    /// such failure in a row, as it does for failed connects, until a session opens.
    public mutating func sessionFailed(random: Double) -> Action {
        guard case .connected = state else { return .none }
        let attempt = sessionFailuresInARow
        sessionFailuresInARow += 1
        state = .backingOff(attempt: attempt)
        return .failInFlightAndReconnect(afterMilliseconds: backoff.delay(attempt: attempt, random: random))
    }

    /// The open connection failed after its session opened: socket error, missed heartbeats,
    /// connection.close.
    public mutating func connectionLost(random: Double) -> Action {
        guard case .connected = state else { return .none }
        state = .backingOff(attempt: 0)
        return .failInFlightAndReconnect(afterMilliseconds: backoff.delay(attempt: 0, random: random))
    }

    public mutating func backoffElapsed() -> Action {
        guard case .backingOff(let attempt) = state else { return .none }
        state = .connecting(attempt: attempt)
        return .connect
    }

    public mutating func shutdown() -> Action {
        if case .closed = state { return .none }
        state = .closed
        return .close
    }
}
