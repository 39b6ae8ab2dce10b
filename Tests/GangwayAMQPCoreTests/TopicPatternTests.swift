import GangwayAMQPCore
import Testing

@Suite("Topic names and patterns")
struct TopicPatternTests {
    @Test(
        "matching follows the topic exchange: * one word, # zero or more",
        arguments: [
            ("orders.*", "orders.created", true),
            ("orders.*", "orders", false),
            ("orders.*", "orders.created.eu", false),
            ("orders.#", "orders", true),
            ("orders.#", "orders.created.eu", true),
            ("#", "anything.at.all", true),
            ("*.created", "orders.created", true),
            ("*.created", "audit.orders.created", false),
            ("#.created", "audit.orders.created", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("a.*.#", "a", false),
            ("a.*.#", "a.b", true),
            ("orders.created", "orders.created", true),
            ("orders.created", "orders.createdx", false),
        ]
    )
    func matching(pattern: String, topic: String, expected: Bool) {
        #expect(TopicPattern(pattern)?.matches(topic) == expected)
    }

    @Test("invalid patterns and topics are refused")
    func validation() {
        for bad in ["", ".", "a..b", "a.", "a b", "a/b", "a.**", "a.#x", String(repeating: "a", count: 256)] {
            #expect(TopicPattern(bad) == nil, "\(bad)")
        }
        #expect(TopicPattern("orders.*.eu-west:1") != nil)
        #expect(TopicPattern.isValidTopic("orders.created"))
        #expect(!TopicPattern.isValidTopic("orders.*"))
        #expect(!TopicPattern.isValidTopic("orders.#"))
        #expect(!TopicPattern.isValidTopic("ordérs"))
    }
}
