import GangwayAMQPCore
import Testing

@Suite("AMQP field tables")
struct AMQPTableTests {
    @Test("a key set again keeps its place with the new value; a new key goes last; nil removes")
    func subscripts() {
        var t: AMQPTable = ["a": 1, "b": "two"]
        t["a"] = 3
        t["c"] = true
        #expect(t.map(\.key) == ["a", "b", "c"])
        #expect(t["a"] == 3 && t["b"] == "two" && t["c"] == true && t["d"] == nil)
        t["b"] = nil
        t["d"] = nil
        #expect(t.map(\.key) == ["a", "c"] && t.count == 2 && !t.isEmpty)
        #expect(AMQPTable().isEmpty && AMQPTable()["a"] == nil)
    }

    @Test("a key that appears twice keeps its last value, in a short table and a long one", arguments: [3, 40])
    func repeatedKeys(count: Int) {
        var entries = (0..<count).map { (key: "k\($0)", value: AMQPFieldValue.int(Int64($0))) }
        entries.insert((key: "k1", value: "first"), at: 0)
        entries.append((key: "k1", value: "last"))
        entries.append((key: "k0", value: "again"))
        let t = AMQPTable(count: entries.count) { entries[$0] }
        #expect(t.count == count)
        #expect(t["k1"] == "last" && t["k0"] == "again")
        #expect(t[count > 2 ? "k2" : "k0"] != nil)
        #expect(Set(t.map(\.key)).count == t.count)
        for i in 2..<count { #expect(t["k\(i)"] == .int(Int64(i))) }
    }

    @Test("equal and of equal hash whatever the order of the keys; unequal when a value, a key or the count differs")
    func equality() {
        let a: AMQPTable = ["x": 1, "y": "v", "z": .table(["n": 1, "m": 2])]
        let b: AMQPTable = ["z": .table(["m": 2, "n": 1]), "y": "v", "x": 1]
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(Set([a, b]).count == 1)
        #expect(a != ["x": 1, "y": "w", "z": .table(["n": 1, "m": 2])])
        #expect(a != ["x": 1, "y": "v", "q": .table(["n": 1, "m": 2])])
        #expect(a != ["x": 1, "y": "v"])
        #expect(AMQPFieldValue.table(a) == .table(b))
    }

    @Test("described like a dictionary literal, in the table's order")
    func description() {
        #expect(AMQPTable().description == "[:]")
        #expect((["b": 1, "a": "x"] as AMQPTable).description == #"["b": int(1), "a": string("x")]"#)
    }
}
