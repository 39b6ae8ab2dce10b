import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import Hummingbird
import HummingbirdCore
import Logging
import NIOPosix

/// The HTTP edge: request/reply and aggregate routes served in each connection's pipeline
/// (``RequestReplyChannelHandler``), and everything else by Hummingbird wired with Gangway's
/// middleware, in this order:
///
/// 1. ``ProblemMiddleware`` — request id, trace context, errors as problem+json
/// 2. ``RouteDispatchMiddleware`` — route finder, then the handler of the route's shape
///
/// and the edge's own endpoints: `GET /healthz` (the process is up; pending requests, unknown
/// replies and open connections counted) and `GET /readyz` (the broker is reachable and replies can be
/// received).
public struct Edge: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var serverName: String
        /// HTTP event-loop threads; `nil` uses one per core.
        public var eventLoopThreads: Int?
        /// Seconds between heartbeat comments on idle event streams: well under the common
        /// 4-minute idle timeout of proxies.
        public var sseHeartbeatSeconds: Int
        /// Largest body `POST /v1/topics/{topic}` accepts.
        public var topicMaxBodyBytes: Int
        /// Serve the demo page at `GET /` when no route takes `/`.
        public var demoPage: Bool
        /// Run the HTTP event loops (and the edge's AMQP connection threads) as batch threads
        /// (``BatchScheduling``).
        public var batchScheduling: Bool
        /// Seconds a client connection may stay idle (nothing read, nothing owed to it) before
        /// it is closed: a keep-alive connection between requests, or one whose request head
        /// is still incomplete (a client that trickles its header fields). `nil`: never.
        public var idleTimeoutSeconds: Int?
        /// Client connections open at most at a time; past it the edge stops accepting until
        /// some close (``ConnectionLimit``). The command line sets it below the open-file limit
        /// (``OpenFileLimit/connectionBudget(forLimit:)``).
        public var maxConnections: Int
        /// The largest reply the edge takes; also what one gather's replies may take in all.
        public var maxReplyBytes: Int

        /// The largest reply body (or streamed part) an edge takes by default: RabbitMQ 4's
        /// default largest message.
        public static let defaultMaxReplyBytes = 16 << 20
        /// The largest job or topic event body an edge takes by default: progress and log
        /// lines are small, and every edge holds each job event for an hour and replays it on
        /// every reconnect.
        public static let defaultMaxEventBytes = 1 << 20

        public init(
            host: String = "0.0.0.0",
            port: Int = 8080,
            serverName: String = "gangway",
            eventLoopThreads: Int? = nil,
            sseHeartbeatSeconds: Int = 15,
            topicMaxBodyBytes: Int = Configuration.defaultMaxEventBytes,
            demoPage: Bool = true,
            batchScheduling: Bool = true,
            idleTimeoutSeconds: Int? = 60,
            maxConnections: Int = .max,
            maxReplyBytes: Int = Configuration.defaultMaxReplyBytes
        ) {
            self.host = host
            self.port = port
            self.serverName = serverName
            self.eventLoopThreads = eventLoopThreads
            self.sseHeartbeatSeconds = sseHeartbeatSeconds
            self.topicMaxBodyBytes = topicMaxBodyBytes
            self.demoPage = demoPage
            self.batchScheduling = batchScheduling
            self.idleTimeoutSeconds = idleTimeoutSeconds
            self.maxConnections = maxConnections
            self.maxReplyBytes = maxReplyBytes
        }
    }

    public static let healthPath = "/healthz"
    public static let readyPath = "/readyz"

    /// Builds the Hummingbird application; run it as a `Service`.
    /// - Parameters:
    ///   - onServerRunning: called with the bound port once the server listens.
    public static func makeApplication(
        configuration: Configuration,
        routes: RouteTable,
        bus: any MessageBus,
        client: RequestReplyClient,
        correlator: Correlator,
        jobs: JobHub,
        topics: TopicHub,
        eventStreams: SSEClients,
        claims: (any ClaimRegistry)? = nil,
        logger: Logger,
        onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Router(context: GatewayRequestContext.self)
        let aggregateClient = AggregateClient(client: client)
        let connections = ConnectionGauge(limit: max(1, configuration.maxConnections))
        router.add(middleware: ProblemMiddleware())
        router.add(
            middleware: RouteDispatchMiddleware(
                routes: routes,
                requestReply: RequestReplyHandler(client: client),
                aggregate: AggregateHandler(client: aggregateClient),
                stream: StreamHandler(client: StreamClient(client: client)),
                gather: GatherHandler(client: GatherClient(client: client, maxBytes: configuration.maxReplyBytes)),
                job: JobHandler(client: JobClient(client: client, hub: jobs, claims: claims), clients: eventStreams),
                topics: TopicHandler(hub: topics, bus: bus, clients: eventStreams, maxBodyBytes: configuration.topicMaxBodyBytes),
                demoPage: configuration.demoPage,
                reservedPaths: [healthPath, readyPath]
            )
        )
        router.get(RouterPath(healthPath)) { _, _ in
            // Counters an operator wants at a glance; /metrics comes with the metrics work.
            let history = jobs.usage
            let topicHistory = topics.historyUsage
            let body = """
                {"status":"ok","pending_requests":\(correlator.pending),"unknown_replies":\(correlator.unknownReplies),\
                "event_streams":\(eventStreams.count),"event_streams_cut_off":\(eventStreams.cutOff),\
                "topic_subscribers":\(topics.subscriberCount),"topic_bindings":\(topics.boundPatterns.count),\
                "topic_history_events":\(topicHistory.events),"topic_history_bytes":\(topicHistory.bytes),"job_event_gaps":\(jobs.eventGaps),\
                "job_history_jobs":\(history.jobs),"job_history_bytes":\(history.bytes),"jobs_forgotten_for_bytes":\(history.forgottenForBytes),\
                "connections":\(connections.open),"connection_limit":\(connections.limit),"connection_limit_reached":\(connections.limitReached)}
                """
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get(RouterPath(readyPath)) { _, _ in
            let ready = bus.isReady
            return Response(
                status: ready ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: ready ? #"{"status":"ready"}"# : #"{"status":"not ready","reason":"broker unavailable"}"#))
            )
        }
        let group = configuration.eventLoopThreads.map { MultiThreadedEventLoopGroup(numberOfThreads: $0) } ?? .singleton
        if configuration.batchScheduling {
            for loop in group.makeIterator() {
                loop.execute { BatchScheduling.applyToCurrentThread() }
            }
        }
        let responder = router.buildResponder()
        let eventStreams = DetachedEventStreams(responder: responder, serverName: configuration.serverName)
        let requestReply = RequestReplyChannelHandler.Configuration(
            routes: routes,
            reservedPaths: [healthPath, readyPath],
            reservedPrefixes: [JobHandler.prefix, TopicHandler.prefix],
            serverName: configuration.serverName,
            send: { request, completion in client.send(request, completion: completion) },
            aggregate: { request, loop, executor, completion in
                aggregateClient.send(request, on: loop, executor: executor, completion: completion)
            }
        )
        return Application(
            responder: responder,
            server: HTTPServerBuilder { responder in
                EdgeHTTPChannel(
                    responder: responder,
                    eventStreams: eventStreams,
                    requestReply: requestReply,
                    idleTimeout: configuration.idleTimeoutSeconds.map { .seconds($0) }
                )
            },
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: configuration.serverName,
                availableConnectionsDelegate: ConnectionLimit(gauge: connections, logger: logger)
            ),
            onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
            eventLoopGroupProvider: .shared(group),
            logger: logger
        )
    }
}
