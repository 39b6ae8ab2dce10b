import HummingbirdCore
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit on open files, and how many client connections it leaves room for.
///
/// Every client connection is a file descriptor. A process that runs out of them cannot open
/// the broker connection it must re-establish, and on Linux it does not survive the moment:
/// libdispatch, under Swift's task executor, reads `/proc/<tid>/stat` every second while tasks
/// are queued, and ends the process when that `open` fails. So the edge raises its soft limit
/// to the hard one at start (the soft limit is often 1 024, kept low for `select(2)`, which
/// nothing here uses), and stops accepting connections at a budget below it (``ConnectionLimit``).
public enum OpenFileLimit {
    /// Raises the soft limit on open files as far as the hard limit allows.
    /// - Returns: the soft limit in force afterwards.
    @discardableResult
    public static func raise() -> Int {
        var limits = rlimit()
        guard getrlimit(resource, &limits) == 0 else { return 1024 }
        if limits.rlim_cur < limits.rlim_max {
            var raised = limits
            // An infinite hard limit is not a valid soft one for open files: the kernel caps
            // descriptors at fs.nr_open, 1 048 576 by default (never lower what is set).
            raised.rlim_cur = limits.rlim_max == infinity ? max(limits.rlim_cur, 1 << 20) : limits.rlim_max
            if setrlimit(resource, &raised) == 0 { limits = raised }
        }
        return limits.rlim_cur == infinity ? Int.max : Int(clamping: limits.rlim_cur)
    }

    /// Descriptors kept out of the connection budget for everything else the process opens:
    /// the broker connections and their reconnections, event-loop descriptors, the listening
    /// socket, standard streams, files read at run time; a quarter of a small limit.
    public static func reserve(forLimit limit: Int) -> Int {
        min(256, max(1, limit / 4))
    }

    /// How many client connections a limit of `limit` open files leaves room for.
    public static func connectionBudget(forLimit limit: Int) -> Int {
        max(1, limit - reserve(forLimit: limit))
    }

    /// RLIM_INFINITY, all ones on Linux and the BSDs; Swift cannot import the C macro.
    private static let infinity = rlim_t.max
    #if canImport(Glibc)
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let resource = RLIMIT_NOFILE
    #endif
}

/// The edge's client connections, as `/healthz` reports them.
public final class ConnectionGauge: Sendable {
    /// Connections the edge accepts at most at a time.
    public let limit: Int
    private let openCount = Atomic<Int>(0)
    private let reachedCount = Atomic<Int>(0)

    public init(limit: Int) {
        self.limit = limit
    }

    /// Client connections open now.
    public var open: Int { openCount.load(ordering: .relaxed) }
    /// How many times the edge stopped accepting because `limit` connections were open.
    public var limitReached: Int { reachedCount.load(ordering: .relaxed) }

    fileprivate func opened() -> Int { openCount.wrappingAdd(1, ordering: .relaxed).newValue }
    fileprivate func closed() { openCount.wrappingSubtract(1, ordering: .relaxed) }
    fileprivate func reached() { reachedCount.wrappingAdd(1, ordering: .relaxed) }
}

/// Stops the edge accepting connections while `limit` of them are open, and accepts again as
/// they close. Clients meanwhile wait in the kernel's listen backlog (their connect succeeds;
/// their request is read once a place frees), as with nginx's `worker_connections`: the edge
/// neither fails nor runs out of file descriptors under a connection flood.
///
/// Hummingbird's handler on the listening channel calls it, on that channel's event loop. One
/// read of that channel may accept a few connections at once (NIO's `maxMessagesPerRead`), so
/// the count may pass `limit` by those few: ``OpenFileLimit/reserve(forLimit:)`` leaves room.
struct ConnectionLimit: AvailableConnectionsDelegate {
    let gauge: ConnectionGauge
    let logger: Logger
    /// The last warning that the limit was reached, so that a flood logs once per interval.
    private var lastWarning: ContinuousClock.Instant?
    private static let warningInterval = Duration.seconds(10)

    init(gauge: ConnectionGauge, logger: Logger) {
        self.gauge = gauge
        self.logger = logger
    }

    mutating func connectionOpened() {
        guard gauge.opened() == gauge.limit else { return }
        gauge.reached()
        let now = ContinuousClock.now
        if let last = lastWarning, now - last < Self.warningInterval { return }
        lastWarning = now
        logger.warning(
            "edge.connections.limit_reached",
            metadata: [
                "edge.connection_limit": "\(gauge.limit)",
                "edge.connection_limit_reached": "\(gauge.limitReached)",
                "edge.detail": "new clients wait in the listen backlog until connections close; raise --max-connections (and the open-file limit) if this is load and not a flood",
            ]
        )
    }

    mutating func connectionClosed() {
        gauge.closed()
    }

    func isAcceptingNewConnections() -> Bool {
        gauge.open < gauge.limit
    }
}
