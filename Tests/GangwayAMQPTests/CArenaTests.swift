import CRabbitMQ
import GangwayAMQPCore
import Testing

@testable import GangwayAMQP

@Suite("CArena: C properties built in its slab, or past it, read back as they were given")
struct CArenaTests {
    /// Every property a message can carry, with `headers`.
    static func properties(headers: AMQPTable) -> AMQPProperties {
        AMQPProperties(
            contentType: "text/plain; charset=utf-8", contentEncoding: "gzip", headers: headers, deliveryMode: 1,
            priority: 3, correlationID: "edge-7.381691", replyTo: "gangway.reply.edge-7", expiration: "5000",
            messageID: "edge-7.381691", timestamp: 1_796_512_142, type: "echo", userID: "guest", appID: "gangway"
        )
    }

    @Test("a request's properties and headers, over and over with a reset between, all in the slab")
    func inSlab() {
        let arena = CArena()
        let headers: AMQPTable = [
            "x-method": "POST", "x-path": "/v1/echo", "x-request-id": "2c530a7f60950d461f3d963301e0fe60",
            "x-deadline": .int(1_796_512_147_400), "x-ratio": .double(0.5), "x-at": .timestamp(1_796_512_142),
            "x-raw": .bytes([0, 1, 255]), "x-none": .void,
            "x-nested": .table(["list": .array([.int(1), .string("two"), .bool(true)]), "empty": .array([])]),
        ]
        let given = Self.properties(headers: headers)
        for round in 0..<3 {
            let c = arena.properties(given)
            #expect(CDecode.properties(c) == given, "round \(round)")
            #expect(arena.overflowCount == 0)
            #expect(arena.slabBytesUsed > 0)
            arena.reset()
            #expect(arena.slabBytesUsed == 0)
        }
    }

    @Test("what does not fit in the slab's rest is allocated on its own, reads back as given, and is freed at reset")
    func pastSlab() {
        let arena = CArena()
        var headers: AMQPTable = [:]
        for i in 0..<100 { headers["x-header-\(i)"] = .string(String(repeating: "v", count: 100 + i)) }
        let given = Self.properties(headers: headers)
        let c = arena.properties(given)
        #expect(arena.overflowCount > 0, "some 15 KiB of values outgrow the 8 KiB slab")
        #expect(CDecode.properties(c) == given)
        let big = String(repeating: "b", count: 3 * CArena.slabBytes)
        #expect(CDecode.string(arena.bytes(big)) == big)
        arena.reset()
        #expect(arena.overflowCount == 0)
        #expect(arena.slabBytesUsed == 0)
        // The slab serves again after the reset.
        #expect(CDecode.string(arena.bytes("demo.echo")) == "demo.echo")
        #expect(arena.overflowCount == 0)
    }
}
