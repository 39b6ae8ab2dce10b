import GangwayAMQP
import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import GangwayEdge
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Everything one edge runs, in start order; graceful shutdown goes in reverse, so the HTTP
/// server drains in-flight requests while the broker connections are still up.
enum EdgeServices {
    /// How long requests and streams in flight get to finish after SIGTERM: under the 30 s
    /// Kubernetes gives a pod by default, with room for the rest of the shutdown.
    static let defaultDrainSeconds = 20.0

    static func make(
        url: AMQPURL,
        configuration: GangwayConfiguration,
        http: Edge.Configuration,
        instanceID: String,
        eventStreamBufferBytes: Int = 256 * 1024,
        maxEventBytes: Int = Edge.Configuration.defaultMaxEventBytes,
        jobHistoryBytes: Int = JobHub.defaultByteLimit,
        drainSeconds: Double = EdgeServices.defaultDrainSeconds,
        topics topicConfiguration: TopicHub.Configuration = .init(),
        logger: Logger,
        onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> [any Service] {
        let replyQueue = "gangway.reply.\(instanceID)"
        // Set below, once the topic hub that it tells exists.
        let topicsLost = LateBound<(@Sendable () -> Void)?>(nil)
        // No reply can arrive before the reply consumer is up: until then requests fail at once.
        let correlator = Correlator(notReceiving: "the reply connection to the broker is not up yet")
        let jobs = JobHub(byteLimit: jobHistoryBytes)
        let publisher = AMQPConnection(
            // Cancel messages go to gangway.cancel and published events to gangway.topics: make
            // sure they exist, or a publish there would close the publishing channel.
            configuration: .init(
                url: url,
                name: "edge.publish",
                topology: configuration.topology
                    .ensuring(WireContract.cancelExchange)
                    .ensuring(WireContract.eventsExchangeSpec)
                    .ensuring(WireContract.topicsExchange),
                batchScheduling: http.batchScheduling
            ),
            logger: logger
        )
        let consumerRef = LateBound<AMQPConnection?>(nil)
        let consumer = AMQPConnection(
            configuration: .init(
                url: url,
                name: "edge.consume",
                // The cancel log takes every cancel request (DELETE /v1/jobs/{id}, a stream's
                // client gone), for workers that are not running or not connected then.
                topology: Topology(
                    exchanges: [WireContract.eventsExchangeSpec, WireContract.deadJobsExchange, WireContract.topicsExchange, WireContract.cancelExchange],
                    queues: [WireContract.cancelLogQueue],
                    bindings: [WireContract.cancelLogBinding]
                ),
                onStateChange: { up in
                    // The exclusive reply queue died with the connection: no reply can arrive,
                    // for the requests waiting and for any published before it is back.
                    if up {
                        correlator.repliesResumed()
                    } else {
                        correlator.repliesStopped("the reply connection to the broker was lost")
                        // So did the topic queue, and the events published until it is back.
                        topicsLost.value?()
                    }
                    // The event log is replayed from its start on every connection; the
                    // marker published now tells when the replay has reached the present.
                    // (Published on this connection, which is up now; the publishing one may
                    // not be yet.)
                    guard up, let consumer = consumerRef.value else {
                        jobs.replayRestarted(up)
                        return
                    }
                    let marker = LogReplay.newMarker(prefix: instanceID)
                    jobs.replayRestarted(true, marker: marker)
                    consumer.publishLogMarker(WireContract.eventLogMarker(marker)) { jobs.replayMarkerLost(marker) }
                },
                batchScheduling: http.batchScheduling
            ),
            logger: logger
        )
        consumerRef.value = consumer
        consumer.consume(
            .init(
                queue: replyQueue,
                declare: QueueSpec(name: replyQueue, durable: false, exclusive: true, autoDelete: true),
                prefetch: 0,
                autoAck: true,
                // A reply is held whole until it is written: a worker's oversized one is
                // dropped as it arrives, and its request answered with a 502.
                maxBodyBytes: http.maxReplyBytes
            )
        ) { delivery in
            correlator.deliver(delivery)
        }
        // Job events for this edge's hub, read from the stream queue from its first offset: an
        // edge that starts (or reconnects) replays the history it missed, and any edge can
        // answer for any job. Replayed events the hub has seen are dropped by their x-seq.
        consumer.consume(
            .init(
                queue: WireContract.eventLogQueue.name,
                declare: WireContract.eventLogQueue,
                bindings: [BindingSpec(source: WireContract.eventsExchange, destination: WireContract.eventLogQueue.name, routingKey: "job.#")],
                prefetch: 1000,
                autoAck: false,
                arguments: ["x-stream-offset": "first"],
                // Every edge holds each event for as long as its job is kept: an oversized one
                // is dropped as it arrives, and kept as a placeholder that says so.
                maxBodyBytes: maxEventBytes
            )
        ) { delivery in
            jobs.replayDelivered(marker: delivery.properties.headers[WireContract.Header.logMarker]?.stringValue)
            let parts = delivery.routingKey.split(separator: ".")
            if parts.count == 3, parts[0] == "job", let seq = delivery.properties.headers[WireContract.Header.seq]?.intValue {
                let jobID = String(parts[1])
                var body = delivery.body
                if let dropped = delivery.droppedBody {
                    body = WireContract.omittedEventBody(size: dropped.size, limit: dropped.limit)
                    logger.warning(
                        "job.event.too_large",
                        metadata: ["job.id": "\(jobID)", "job.event.seq": "\(seq)", "job.event.bytes": "\(dropped.size)", "job.event.limit": "\(dropped.limit)"]
                    )
                }
                if let skipped = jobs.record(jobID: jobID, kind: String(parts[2]), seq: Int(seq), body: body) {
                    // Not expected: a worker publishes an event only once the one before it
                    // is confirmed. Said, so that it is seen.
                    logger.warning(
                        "job.events.gap",
                        metadata: ["job.id": "\(jobID)", "job.event.seq": "\(seq)", "job.events.missing": "\(skipped.lowerBound)...\(skipped.upperBound)"]
                    )
                }
                if let key = delivery.properties.headers[WireContract.Header.idempotencyKey]?.stringValue {
                    jobs.remember(idempotencyKey: key, for: jobID)
                }
                if delivery.properties.headers[WireContract.Header.resultRedirect]?.boolValue == true {
                    jobs.setResultRedirect(for: jobID)
                }
            }
            consumer.ack(delivery)
        }
        // Topic events for this edge's subscribers: an exclusive queue, bound per pattern by the
        // hub as subscribers come and go (the bindings are declared again after a reconnect).
        let topicQueue = "gangway.topics.\(instanceID)"
        let eventStreams = SSEClients(bufferLimit: eventStreamBufferBytes)
        let topicTag = LateBound("")
        let topics = TopicHub(
            binder: AMQPTopicBinder(connection: consumer, queue: topicQueue, consumerTag: topicTag),
            instanceID: instanceID,
            configuration: topicConfiguration
        )
        topicsLost.value = { topics.connectionLost() }
        topicTag.value = consumer.consume(
            .init(
                queue: topicQueue,
                declare: QueueSpec(name: topicQueue, durable: false, exclusive: true, autoDelete: true),
                prefetch: 0,
                autoAck: true,
                // As job events: an oversized one (published straight to the exchange; the
                // edge's own POST refuses it) is dropped as it arrives and passed on as a
                // placeholder.
                maxBodyBytes: maxEventBytes
            )
        ) { delivery in
            var (body, contentType) = (delivery.body, delivery.properties.contentType)
            if let dropped = delivery.droppedBody {
                (body, contentType) = (WireContract.omittedEventBody(size: dropped.size, limit: dropped.limit), "application/json")
                logger.warning(
                    "topic.event.too_large",
                    metadata: ["topic": "\(delivery.routingKey)", "topic.event.bytes": "\(dropped.size)", "topic.event.limit": "\(dropped.limit)"]
                )
            }
            topics.deliver(topic: delivery.routingKey, messageID: delivery.properties.messageID, contentType: contentType, body: body)
        }
        let bus = AMQPMessageBus(publisher: publisher, consumer: consumer, replyQueue: replyQueue)
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: instanceID)
        let app = Edge.makeApplication(
            configuration: http,
            routes: configuration.routes,
            bus: bus,
            client: client,
            correlator: correlator,
            jobs: jobs,
            topics: topics,
            eventStreams: eventStreams,
            claims: bus,
            logger: logger,
            onServerRunning: onServerRunning
        )
        let deadJobs = DeadJobReporter(consumer: consumer, publisher: publisher, hub: jobs, logger: logger)
        // Event streams come last: on graceful shutdown they end first, so the server can drain.
        let streams = EventStreamService(topics: topics, clients: eventStreams, heartbeatSeconds: http.sseHeartbeatSeconds)
        // Past the drain, what still waits for the broker is answered 503 shutting-down.
        let server = DrainDeadline(server: app, drain: .milliseconds(Int64(drainSeconds * 1000))) {
            logger.notice("edge.drain.expired", metadata: ["edge.pending": "\(correlator.pending)"])
            correlator.shutDown()
        }
        let sweeper = CorrelatorService(correlator: correlator, eventLoop: app.eventLoopGroup.next())
        return [publisher, consumer, sweeper, deadJobs, server, streams]
    }
}

/// The hub's bindings as bindings of the edge's topic queue on `gangway.topics`.
struct AMQPTopicBinder: TopicBinder {
    let connection: AMQPConnection
    let queue: String
    let consumerTag: LateBound<String>

    func binding(_ pattern: TopicPattern) -> BindingSpec {
        BindingSpec(source: WireContract.topicsExchange.name, destination: queue, routingKey: pattern.text)
    }

    func bind(_ pattern: TopicPattern) async throws {
        do {
            try await connection.addBinding(binding(pattern), toConsumer: consumerTag.value)
        } catch {
            try? await connection.removeBinding(binding(pattern), fromConsumer: consumerTag.value)
            throw error
        }
    }

    func unbind(_ pattern: TopicPattern) async throws {
        try await connection.removeBinding(binding(pattern), fromConsumer: consumerTag.value)
    }
}

/// The correlator's deadline sweeps, paced by one of the edge's HTTP event loops.
struct CorrelatorService: Service {
    let correlator: Correlator
    let eventLoop: any EventLoop

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await correlator.run(sweepingOn: eventLoop)
        }
    }
}
