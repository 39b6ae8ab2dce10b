import Testing

@testable import GangwayEdge

struct RequestIdentityTests {
    static func isLowerHex(_ s: String) -> Bool {
        s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    @Test func hexWritesSixteenDigitsPerValue() {
        #expect(RequestIdentity.hex(0) == "0000000000000000")
        #expect(RequestIdentity.hex(0xdead_beef) == "00000000deadbeef")
        #expect(RequestIdentity.hex(.max, 1) == "ffffffffffffffff0000000000000001")
    }

    @Test func aValidClientRequestIDIsKept() {
        #expect(RequestIdentity.requestID(from: "order-42") == "order-42")
    }

    @Test(arguments: [nil, "", "has space", "tab\tin", String(repeating: "x", count: 129), "ünïcode"])
    func anInvalidOrMissingRequestIDIsReplaced(header: String?) {
        let id = RequestIdentity.requestID(from: header)
        #expect(id != header)
        #expect(id.utf8.count == 32)
        #expect(Self.isLowerHex(id))
    }

    @Test func newIDsDoNotRepeatAcrossRefills() {
        // A pool of 4 words refills every second id: ids must still all differ.
        let pool = RandomPool(words: 4)
        let ids = (0..<1000).map { _ in RequestIdentity.requestID(from: nil, random: pool) }
        #expect(Set(ids).count == ids.count)
    }

    @Test func aValidTraceIsContinuedWithANewSpan() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let parts = RequestIdentity.traceparent(from: incoming).split(separator: "-").map(String.init)
        #expect(parts.count == 4)
        #expect(parts[0] == "00")
        #expect(parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(parts[2].count == 16 && Self.isLowerHex(parts[2]) && parts[2] != "00f067aa0ba902b7")
        #expect(parts[3] == "01")
    }

    @Test func theClientsTraceFlagsAreKept() {
        let parts = RequestIdentity.traceparent(from: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").split(separator: "-")
        #expect(parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(parts[3] == "00")
    }

    @Test(arguments: [
        nil, "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // Upper-case hex, an all-zero parent id, a parent id or flags that are not hex, a field
        // of the wrong length, one byte too many: not W3C's version 00.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902zz-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "-00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ])
    func anInvalidOrMissingTraceStartsANewOne(header: String?) {
        let parts = RequestIdentity.traceparent(from: header).split(separator: "-").map(String.init)
        #expect(parts.count == 4)
        #expect(parts[0] == "00")
        #expect(parts[1].count == 32 && Self.isLowerHex(parts[1]) && parts[1] != String(repeating: "0", count: 32))
        #expect(parts[2].count == 16 && Self.isLowerHex(parts[2]) && parts[2] != String(repeating: "0", count: 16))
        #expect(parts[3] == "01")
        if let header { #expect(!header.contains(parts[1])) }
    }
}
