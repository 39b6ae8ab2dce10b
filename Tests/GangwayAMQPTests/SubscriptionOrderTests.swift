import GangwayAMQPCore
import Testing

@testable import GangwayAMQP

@Suite("The order consumers are subscribed in on a connect")
struct SubscriptionOrderTests {
    func consumer(_ queue: String, order: Int, offset: AMQPFieldValue? = nil) -> AMQPConnection.Consumer {
        var options = ConsumerOptions(queue: queue)
        if let offset { options.arguments["x-stream-offset"] = offset }
        return AMQPConnection.Consumer(options: options, handler: { _ in }, order: order)
    }

    @Test("as registered, with the consumers that replay a stream last, whatever the tags")
    func order() {
        // As the edge registers them: replies, the event log (from its first offset), topics,
        // dead jobs. Tags sort otherwise ("edge.consume.10" before "edge.consume.2").
        let consumers = [
            "edge.consume.10": consumer("gangway.reply.x", order: 10),
            "edge.consume.11": consumer("gangway.events.log", order: 11, offset: "first"),
            "edge.consume.2": consumer("gangway.topics.x", order: 12),
            "edge.consume.3": consumer("gangway.jobs.dead", order: 13),
            "edge.consume.4": consumer("other.log", order: 1, offset: .int(0)),
        ]
        let queues = AMQPConnection.subscriptionOrder(consumers).map(\.value.options.queue)
        #expect(queues == ["gangway.reply.x", "gangway.topics.x", "gangway.jobs.dead", "other.log", "gangway.events.log"])
    }
}
