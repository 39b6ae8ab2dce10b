import GangwayAMQP
import GangwayAMQPCore
import GangwayCore
import Logging
import NIOCore
import ServiceLifecycle

/// Reports jobs that their queue dead-lettered (too many deliveries: the worker keeps dying on
/// them) as `job.<id>.failed`, so that followers and the status resource learn of it. Every
/// edge consumes the dead-job queue; the broker gives each dead job to one of them.
struct DeadJobReporter: Service {
    let consumer: AMQPConnection
    let publisher: AMQPConnection
    let hub: JobHub
    let logger: Logger

    func run() async throws {
        let (dead, continuation) = AsyncStream.makeStream(of: Delivery.self)
        // Bounded by the prefetch: at most 16 unacknowledged dead jobs are out to this edge.
        let tag = consumer.consume(
            .init(
                queue: WireContract.deadJobsQueue.name,
                declare: WireContract.deadJobsQueue,
                bindings: [BindingSpec(source: WireContract.deadJobsExchange.name, destination: WireContract.deadJobsQueue.name, routingKey: "")],
                prefetch: 16
            )
        ) { delivery in
            continuation.yield(delivery)
        }
        await withGracefulShutdownHandler {
            for await delivery in dead {
                await report(delivery)
            }
        } onGracefulShutdown: {
            consumer.cancelConsumer(tag: tag)
            continuation.finish()
        }
    }

    private func report(_ delivery: Delivery) async {
        let headers = delivery.properties.headers
        guard let jobID = headers[WireContract.Header.jobID]?.stringValue ?? delivery.properties.messageID else {
            consumer.ack(delivery)
            return
        }
        // RabbitMQ says why in x-death: "delivery_limit" when the worker kept dying on it.
        var reason = "unknown"
        if case .array(let deaths)? = headers["x-death"], case .table(let first)? = deaths.first, let r = first["reason"]?.stringValue {
            reason = r
        }
        let seq = (hub.status(of: jobID)?.lastSeq ?? 0) + 1
        let detail = "dead-lettered (\(reason)): no worker finished the job within its queue's delivery limit"
        let body = #"{"error":\#(JSONString.quote(detail)),"reason":\#(JSONString.quote(reason))}"#
        let event = WireContract.jobEvent(jobID: jobID, kind: "failed", seq: seq, json: body, appID: WireContract.appID, extraHeaders: WireContract.echoedJobHeaders(headers))
        do {
            switch try await publisher.publish(event) {
            case .confirmed: break
            case .nacked: throw DeadJobReportRefused(reason: "the broker refused the event (nack)")
            case .returned: throw DeadJobReportRefused(reason: "the event reached no queue (the event log is not routable)")
            }
            consumer.ack(delivery)
            logger.info("job.dead", metadata: ["job.id": "\(jobID)", "job.dead.reason": "\(reason)"])
        } catch {
            // Handed back to the queue for this edge or another to report, after a pause: left
            // unacknowledged it would wait for this connection to close, and handed back at
            // once it would come straight back while the broker is away or blocking.
            logger.warning("job.dead.report.failed", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
            try? await Task.sleep(for: .seconds(1))
            consumer.reject(delivery, requeue: true)
        }
    }
}

/// The broker did not take a dead job's `failed` event: the dead message goes back to be
/// reported again, not acknowledged with the report lost.
struct DeadJobReportRefused: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}
