import GangwayAMQP
import GangwayAMQPCore
import Logging
import NIOCore
import ServiceLifecycle

/// A request/reply worker: consumes a queue, runs a handler per message, publishes the reply to
/// the message's `reply_to`, then acknowledges.
///
/// Concurrency equals the prefetch: the broker never has more than `prefetch` unacknowledged
/// messages out to this worker, so at most that many handlers run and the hand-off stream
/// never holds more than that many deliveries. A handler that throws produces a 500 problem
/// reply; a message past its `x-deadline` is acknowledged and dropped unprocessed, because its
/// requester has already answered 504. A worker that dies before acking gets its messages
/// redelivered to another worker.
public struct Worker: Service {
    public struct Configuration: Sendable {
        public var url: AMQPURL
        public var queue: String
        public var prefetch: UInt16
        /// Declared on every (re)connect, e.g. the shipped topology.
        public var topology: Topology
        public var name: String

        public init(url: AMQPURL, queue: String, prefetch: UInt16 = 64, topology: Topology = Topology(), name: String? = nil) {
            self.url = url
            self.queue = queue
            self.prefetch = prefetch
            self.topology = topology
            self.name = name ?? "worker.\(queue)"
        }
    }

    public typealias Handler = @Sendable (WorkerRequest) async throws -> WorkerReply

    public let configuration: Configuration
    private let connection: AMQPConnection
    private let handler: Handler
    private let logger: Logger

    public init(configuration: Configuration, logger: Logger, handler: @escaping Handler) {
        self.configuration = configuration
        self.handler = handler
        var logger = logger
        logger[metadataKey: "worker.queue"] = "\(configuration.queue)"
        self.logger = logger
        self.connection = AMQPConnection(
            configuration: .init(url: configuration.url, name: configuration.name, topology: configuration.topology),
            logger: logger
        )
    }

    public func run() async throws {
        let (deliveries, continuation) = AsyncStream.makeStream(of: Delivery.self)
        connection.start()
        let tag = connection.consume(.init(queue: configuration.queue, prefetch: configuration.prefetch)) { delivery in
            continuation.yield(delivery)
        }
        logger.info("worker.started", metadata: ["worker.prefetch": "\(configuration.prefetch)"])
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                for await delivery in deliveries {
                    group.addTask { await self.process(delivery) }
                }
            }
        } onGracefulShutdown: {
            // Stop taking new messages; those already here finish, then the stream ends.
            connection.cancelConsumer(tag: tag)
            continuation.finish()
        }
        await connection.shutdown()
        logger.info("worker.stopped")
    }

    private func process(_ delivery: Delivery) async {
        let request = WorkerRequest(delivery: delivery)
        if let deadline = request.deadlineEpochMilliseconds, deadline < WireContract.epochMilliseconds() {
            logger.debug("worker.expired", metadata: ["request.id": "\(request.requestID)"])
            connection.ack(delivery)
            return
        }
        var reply: WorkerReply
        do {
            reply = try await handler(request)
        } catch {
            logger.warning("worker.handler.failed", metadata: ["request.id": "\(request.requestID)", "error": "\(error)"])
            reply = .problem(status: 500, title: "Internal Server Error", detail: "the worker failed to handle the request")
        }
        guard let replyTo = delivery.properties.replyTo, !replyTo.isEmpty else {
            connection.ack(delivery)
            return
        }
        var headers: AMQPTable = [WireContract.Header.status: .int(Int64(reply.status))]
        for (name, value) in reply.headers {
            headers[WireContract.Header.headerPrefix + name.lowercased()] = .string(value)
        }
        let message = OutboundMessage(
            exchange: "",
            routingKey: replyTo,
            properties: AMQPProperties(
                contentType: reply.contentType,
                headers: headers,
                deliveryMode: 1,
                correlationID: delivery.properties.correlationID,
                appID: configuration.name
            ),
            body: reply.body
        )
        do {
            _ = try await connection.publish(message)
            connection.ack(delivery)
        } catch {
            // Not acked: the broker redelivers the request once this connection is gone.
            logger.warning("worker.reply.failed", metadata: ["request.id": "\(request.requestID)", "error": "\(error)"])
        }
    }
}
