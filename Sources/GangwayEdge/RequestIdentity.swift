/// Request ids and W3C trace context for the hop from the edge to a worker.
enum RequestIdentity {
    /// The client's id when it is 1...128 visible ASCII characters, otherwise a new one.
    static func requestID(from header: String?) -> String {
        if let header, !header.isEmpty, header.utf8.count <= 128, header.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) {
            return header
        }
        return hex(UInt64.random(in: .min ... .max)) + hex(UInt64.random(in: .min ... .max))
    }

    /// Continues the client's trace with a new span id, or starts one.
    static func traceparent(from header: String?) -> String {
        let span = hex(UInt64.random(in: 1 ... .max))
        if let header {
            let parts = header.split(separator: "-")
            if parts.count == 4, parts[0] == "00", parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
                parts[1].utf8.allSatisfy(isHex), parts[3].utf8.allSatisfy(isHex), parts[1] != String(repeating: "0", count: 32)
            {
                return "00-\(parts[1])-\(span)-\(parts[3])"
            }
        }
        return "00-\(hex(UInt64.random(in: 1 ... .max)))\(hex(UInt64.random(in: .min ... .max)))-\(span)-01"
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    private static func isHex(_ c: UInt8) -> Bool {
        (48...57).contains(c) || (97...102).contains(c)
    }
}
