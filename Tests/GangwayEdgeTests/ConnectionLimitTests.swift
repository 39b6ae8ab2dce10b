import Logging
import Synchronization
import Testing

@testable import GangwayEdge

#if canImport(Glibc)
import Glibc
#endif

struct ConnectionLimitTests {
    /// Keeps the messages logged through it.
    final class Recorder: Sendable {
        let messages = Mutex<[String]>([])

        var logger: Logger {
            Logger(label: "test") { _ in Handler(recorder: self) }
        }

        struct Handler: LogHandler {
            let recorder: Recorder
            var metadata: Logger.Metadata = [:]
            var logLevel: Logger.Level = .trace
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) {
                recorder.messages.withLock { $0.append("\(event.level) \(event.message)") }
            }
        }
    }

    @Test(arguments: [
        (limit: 1024, reserve: 256, budget: 768),
        (limit: 160, reserve: 40, budget: 120),
        (limit: 100_000, reserve: 256, budget: 99_744),
        (limit: 4, reserve: 1, budget: 3),
        (limit: 1, reserve: 1, budget: 1),
        (limit: Int.max, reserve: 256, budget: Int.max - 256),
    ])
    func theBudgetKeepsAReserveOfAQuarterUpTo256(limit: Int, reserve: Int, budget: Int) {
        #expect(OpenFileLimit.reserve(forLimit: limit) == reserve)
        #expect(OpenFileLimit.connectionBudget(forLimit: limit) == budget)
    }

    @Test func raisingSetsTheSoftLimitToTheHardOne() {
        var before = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &before)
        let raised = OpenFileLimit.raise()
        var after = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &after)
        #expect(raised == Int(clamping: after.rlim_cur))
        #expect(after.rlim_cur >= before.rlim_cur)
        if before.rlim_max != rlim_t.max {
            #expect(after.rlim_cur == before.rlim_max)
        }
    }

    @Test func acceptingStopsAtTheLimitAndResumesWhenAConnectionCloses() {
        let recorder = Recorder()
        let gauge = ConnectionGauge(limit: 2)
        var limit = ConnectionLimit(gauge: gauge, logger: recorder.logger)
        #expect(limit.isAcceptingNewConnections())
        limit.connectionOpened()
        #expect(limit.isAcceptingNewConnections())
        #expect(recorder.messages.withLock { $0 }.isEmpty)
        limit.connectionOpened()
        #expect(!limit.isAcceptingNewConnections())
        #expect(gauge.open == 2 && gauge.limitReached == 1)
        #expect(recorder.messages.withLock { $0 } == ["warning edge.connections.limit_reached"])
        limit.connectionClosed()
        #expect(limit.isAcceptingNewConnections())
        #expect(gauge.open == 1)
    }

    @Test func aFloodIsCountedEachTimeButWarnedOncePerInterval() {
        let recorder = Recorder()
        let gauge = ConnectionGauge(limit: 1)
        var limit = ConnectionLimit(gauge: gauge, logger: recorder.logger)
        for _ in 0..<5 {
            limit.connectionOpened()
            #expect(!limit.isAcceptingNewConnections())
            limit.connectionClosed()
            #expect(limit.isAcceptingNewConnections())
        }
        #expect(gauge.limitReached == 5 && gauge.open == 0)
        #expect(recorder.messages.withLock { $0.count } == 1)
    }

    @Test func connectionsAcceptedInOneBurstPastTheLimitAreCountedUntilTheyClose() {
        let gauge = ConnectionGauge(limit: 2)
        var limit = ConnectionLimit(gauge: gauge, logger: Logger(label: "test"))
        for _ in 0..<4 { limit.connectionOpened() }
        #expect(gauge.open == 4 && gauge.limitReached == 1)
        limit.connectionClosed()
        limit.connectionClosed()
        #expect(!limit.isAcceptingNewConnections())
        limit.connectionClosed()
        #expect(limit.isAcceptingNewConnections())
    }
}
