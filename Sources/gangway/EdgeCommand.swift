import ArgumentParser
import GangwayCore
import GangwayEdge
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct EdgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edge",
        abstract: "Run the HTTP edge: routes requests onto RabbitMQ and returns the replies."
    )

    @OptionGroup var broker: BrokerOptions
    @OptionGroup var files: FileOptions
    @OptionGroup var log: LogOptions

    @Option(help: "Address to listen on.")
    var host = "0.0.0.0"

    @Option(help: "HTTP port. Default: $GANGWAY_HTTP_PORT or 8080; 0 picks a free port.")
    var port: Int?

    @Option(help: "Seconds between heartbeat comments on idle event streams.")
    var sseHeartbeat = 15

    @Option(help: "Bytes an event-stream client may fall behind before it is cut off.")
    var sseBufferBytes = 256 * 1024

    @Option(help: "Seconds a topic pattern stays bound after its last subscriber left (resume without a gap).")
    var topicLinger = 30

    @Option(help: "Largest reply body (or streamed part) taken from a worker, in bytes; a larger one is dropped as it arrives and answered with 502 reply-too-large. Default: 16 MiB.")
    var maxReplyBytes = Edge.Configuration.defaultMaxReplyBytes

    @Option(help: "Largest job or topic event body, in bytes: a larger POST /v1/topics/{topic} is refused with 413, and a larger event from the broker is dropped as it arrives and passed on as a placeholder that gives its size (a job's keeps its x-seq, so its events stay numbered without a gap). Default: 1 MiB.")
    var maxEventBytes = Edge.Configuration.defaultMaxEventBytes

    @Option(help: "Bytes of job event bodies kept for all jobs together; past it the oldest jobs are forgotten first. Default: 256 MiB.")
    var jobHistoryBytes = JobHub.defaultByteLimit

    @Option(help: "Seconds requests and streams in flight get to finish after SIGTERM or SIGINT; then those still waiting are answered 503 shutting-down. The process ends at most 5 s later.")
    var shutdownTimeout = EdgeServices.defaultDrainSeconds

    @Option(help: "Topic events kept for Last-Event-ID resumption.")
    var topicHistory = 10_000

    @Option(help: "Bytes of topic events kept for Last-Event-ID resumption; past it the oldest go first. Default: 64 MiB.")
    var topicHistoryBytes = TopicHub.Configuration.defaultHistoryByteLimit

    @Flag(inversion: .prefixedNo, help: "Serve the demo page at GET / when no route takes /.")
    var demoPage = true

    @Option(help: "HTTP event-loop threads. Default: one per core.")
    var threads: Int?

    @Flag(inversion: .prefixedNo, help: "Run the event loops and AMQP threads as Linux batch threads (SCHED_BATCH): fewer preemptions under load.")
    var batchScheduling = true

    @Option(help: "Seconds a client connection may stay idle (between requests, or with its request head unfinished) before it is closed; 0: never.")
    var idleTimeout = 60

    @Option(help: "Client connections open at most at a time; more wait in the listen backlog. Default: what the open-file limit (raised to its hard limit at start) leaves after a reserve.")
    var maxConnections: Int?

    @Option(help: "Instance id, part of the reply queue name gangway.reply.<id>. Default: random.")
    var instanceID: String?

    func validate() throws {
        guard (0...86_400).contains(idleTimeout) else {
            throw ValidationError("--idle-timeout must be 0 (never) or a number of seconds up to 86400, got \(idleTimeout)")
        }
        guard shutdownTimeout > 0, shutdownTimeout <= 3600 else {
            throw ValidationError("--shutdown-timeout must be more than 0 and at most 3600 seconds, got \(shutdownTimeout)")
        }
        guard maxReplyBytes >= 1 else {
            throw ValidationError("--max-reply-bytes must be at least 1, got \(maxReplyBytes)")
        }
        guard maxEventBytes >= 64 else {
            throw ValidationError("--max-event-bytes must be at least 64 (room for the placeholder of a larger event), got \(maxEventBytes)")
        }
        guard topicHistoryBytes >= 1 else {
            throw ValidationError("--topic-history-bytes must be at least 1, got \(topicHistoryBytes)")
        }
        guard jobHistoryBytes >= maxEventBytes else {
            throw ValidationError("--job-history-bytes must be at least --max-event-bytes (\(maxEventBytes)), got \(jobHistoryBytes)")
        }
        if let maxConnections, maxConnections < 1 {
            throw ValidationError("--max-connections must be at least 1, got \(maxConnections)")
        }
    }

    func run() async throws {
        let logger = log.bootstrap(label: "gangway.edge")
        let url = try broker.url()
        let configuration = try files.load()
        let port = try self.port ?? HTTPPort.fromEnvironment() ?? 8080
        let instance = instanceID ?? InstanceID.random()
        let connections = try ConnectionBudget.resolve(requested: maxConnections)
        let services = EdgeServices.make(
            url: url,
            configuration: configuration,
            http: .init(
                host: host,
                port: port,
                eventLoopThreads: threads,
                sseHeartbeatSeconds: max(1, min(sseHeartbeat, 120)),
                topicMaxBodyBytes: maxEventBytes,
                demoPage: demoPage,
                batchScheduling: batchScheduling,
                idleTimeoutSeconds: idleTimeout > 0 ? idleTimeout : nil,
                maxConnections: connections.limit,
                maxReplyBytes: maxReplyBytes
            ),
            instanceID: instance,
            eventStreamBufferBytes: max(1024, sseBufferBytes),
            maxEventBytes: maxEventBytes,
            jobHistoryBytes: jobHistoryBytes,
            drainSeconds: shutdownTimeout,
            topics: .init(historyLimit: max(0, topicHistory), historyByteLimit: topicHistoryBytes, lingerMilliseconds: Int64(max(0, topicLinger)) * 1000),
            logger: logger,
            onServerRunning: { port in
                logger.info(
                    "edge.listening",
                    metadata: [
                        "http.port": "\(port)", "amqp.url": "\(url)", "edge.instance": "\(instance)",
                        "edge.connection_limit": "\(connections.limit)", "process.open_file_limit": "\(connections.openFiles)",
                    ]
                )
            }
        )
        var groupConfiguration = ServiceGroupConfiguration(services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // A client that does not read its answer cannot hold the edge up either.
        groupConfiguration.maximumGracefulShutdownDuration = .milliseconds(Int64(shutdownTimeout * 1000) + 5000)
        let group = ServiceGroup(configuration: groupConfiguration)
        try await ListenFailure.explaining(host: host, port: port) { try await group.run() }
    }
}

/// Says in plain words why the edge could not listen, for the causes a user can fix.
struct ListenFailure: Error, CustomStringConvertible {
    var description: String

    static func explaining(host: String, port: Int, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as IOError {
            let reason: String
            switch error.errnoCode {
            case EADDRINUSE: reason = "another process is listening on that port; stop it or choose another port with --port or GANGWAY_HTTP_PORT"
            case EACCES: reason = "permission denied (ports below 1024 need privileges); choose another port with --port or GANGWAY_HTTP_PORT"
            case EADDRNOTAVAIL: reason = "\(host) is not an address of this machine (--host)"
            default: throw error
            }
            throw ListenFailure(description: "cannot listen on \(host):\(port): \(reason)")
        }
    }
}

/// The edge's connection limit: the one asked for, or what the open-file limit leaves.
enum ConnectionBudget {
    /// Raises the open-file limit to its hard limit, then checks `requested` against it.
    /// - Returns: the connection limit to use, and the open-file limit now in force.
    static func resolve(requested: Int?) throws -> (limit: Int, openFiles: Int) {
        let openFiles = OpenFileLimit.raise()
        let budget = OpenFileLimit.connectionBudget(forLimit: openFiles)
        guard let requested else { return (budget, openFiles) }
        guard requested <= budget else {
            throw ValidationError(
                "--max-connections \(requested) is more than the open-file limit leaves room for: \(openFiles) open files, less \(OpenFileLimit.reserve(forLimit: openFiles)) kept for the broker connections and the rest, leave \(budget); raise the limit (ulimit -n, systemd's LimitNOFILE=, docker run --ulimit nofile=) or ask for \(budget) at most"
            )
        }
        return (requested, openFiles)
    }
}

enum HTTPPort {
    static func fromEnvironment() throws -> Int? {
        guard let text = ProcessInfo.processInfo.environment["GANGWAY_HTTP_PORT"], !text.isEmpty else { return nil }
        guard let port = Int(text), (0...65535).contains(port) else {
            throw ValidationError("GANGWAY_HTTP_PORT must be a port number, got '\(text)'")
        }
        return port
    }
}

enum InstanceID {
    static func random() -> String {
        let s = String(UInt64.random(in: .min ... .max), radix: 36)
        return String(s.prefix(10))
    }
}
