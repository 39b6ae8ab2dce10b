import GangwayAMQPCore
import Testing

@Suite("Field values as the contract reads them")
struct FieldValueTests {
    @Test("statuses and flags are read from numbers or text")
    func lenientReads() {
        #expect(AMQPFieldValue.int(404).intValue == 404)
        #expect(AMQPFieldValue.string(" 201 ").intValue == 201)
        #expect(AMQPFieldValue.bytes(Array("503".utf8)).intValue == 503)
        #expect(AMQPFieldValue.string("abc").intValue == nil)
        #expect(AMQPFieldValue.double(2.5).intValue == nil)
        #expect(AMQPFieldValue.string("true").boolValue == true)
        #expect(AMQPFieldValue.int(0).boolValue == false)
        #expect(AMQPFieldValue.string("yes").boolValue == nil)
        #expect(AMQPFieldValue.table([:]).stringValue == nil)
    }

    @Test("the topology tells which queue a direct publish lands in")
    func routingLookup() {
        let t = Topology(
            exchanges: [ExchangeSpec(name: "rpc", type: "direct"), ExchangeSpec(name: "events", type: "topic")],
            queues: [QueueSpec(name: "a"), QueueSpec(name: "b")],
            bindings: [BindingSpec(source: "rpc", destination: "a", routingKey: "ka"), BindingSpec(source: "rpc", destination: "b", routingKey: "kb")]
        )
        #expect(t.queues(forExchange: "rpc", routingKey: "kb") == ["b"])
        #expect(t.queues(forExchange: "rpc", routingKey: "none") == [])
        #expect(t.queues(forExchange: "", routingKey: "direct.q") == ["direct.q"])
        #expect(t.queues(forExchange: "events", routingKey: "ka") == [])
    }

    @Test("a stream queue is told apart by its x-queue-type argument, as the edge's job event log is")
    func streamQueues() {
        #expect(WireContract.eventLogQueue.isStream)
        #expect(QueueSpec(name: "s", arguments: ["x-queue-type": .string("stream")]).isStream)
        #expect(!QueueSpec(name: "c", arguments: ["x-queue-type": .string("classic")]).isStream)
        #expect(!QueueSpec(name: "q", arguments: ["x-queue-type": .string("quorum")]).isStream)
        #expect(!QueueSpec(name: "plain").isStream)
    }
}
