import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Request ids and W3C trace context for the hop from the edge to a worker.
enum RequestIdentity {
    /// The client's id when it is 1...128 visible ASCII characters, otherwise a new one.
    static func requestID(from header: String?, random: RandomPool = .shared) -> String {
        if let header, !header.isEmpty, header.utf8.count <= 128, header.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) {
            return header
        }
        let (a, b) = random.next2()
        return hex(a, b)
    }

    /// Continues the client's trace with a new span id, or starts one.
    static func traceparent(from header: String?, random: RandomPool = .shared) -> String {
        if let header {
            let parts = header.split(separator: "-")
            if parts.count == 4, parts[0] == "00", parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
                parts[1].utf8.allSatisfy(isHex), parts[3].utf8.allSatisfy(isHex), parts[1] != String(repeating: "0", count: 32)
            {
                return "00-\(parts[1])-\(hex(random.nonZero()))-\(parts[3])"
            }
        }
        var (high, low) = random.next2()
        if high == 0 && low == 0 { low = 1 }  // an all-zero trace id is invalid
        return "00-\(hex(high, low))-\(hex(random.nonZero()))-01"
    }

    /// 16 lowercase hex digits.
    static func hex(_ value: UInt64) -> String {
        String(unsafeUninitializedCapacity: 16) { out in
            writeHex(value, into: out, at: 0)
            return 16
        }
    }

    /// 32 lowercase hex digits: `high`, then `low`.
    static func hex(_ high: UInt64, _ low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 32) { out in
            writeHex(high, into: out, at: 0)
            writeHex(low, into: out, at: 16)
            return 32
        }
    }

    private static func writeHex(_ value: UInt64, into out: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        let digits: StaticString = "0123456789abcdef"
        digits.withUTF8Buffer { digits in
            for i in 0..<16 {
                out[start + i] = digits[Int(value >> UInt64(60 - 4 * i) & 0xf)]
            }
        }
    }

    private static func isHex(_ c: UInt8) -> Bool {
        (48...57).contains(c) || (97...102).contains(c)
    }
}

/// Random numbers for ids, read from the kernel a few KiB at a time.
///
/// Every request needs up to five 64-bit random numbers (request id, trace id, span id), and
/// the standard generator makes a `getrandom(2)` call for each: a measurable share of the
/// edge's time per request. The pool draws the same kernel randomness in bulk and hands it
/// out under a short lock. Ids are not secrets; nothing here is used as a key.
final class RandomPool: Sendable {
    static let shared = RandomPool()

    private struct State {
        var words: [UInt64]
        var next: Int
    }

    private let state: Mutex<State>
    private let size: Int

    /// - Parameter words: 64-bit numbers drawn per refill.
    init(words: Int = 512) {
        size = max(2, words)
        state = Mutex(State(words: [], next: 0))
    }

    func next() -> UInt64 {
        take(1).0
    }

    /// Two numbers under one lock.
    func next2() -> (UInt64, UInt64) {
        take(2)
    }

    /// A number other than zero, as a span id must be.
    func nonZero() -> UInt64 {
        while true {
            let value = next()
            if value != 0 { return value }
        }
    }

    private func take(_ count: Int) -> (UInt64, UInt64) {
        state.withLock { s in
            if s.next + count > s.words.count {
                s.words = Self.draw(size)
                s.next = 0
            }
            defer { s.next += count }
            return (s.words[s.next], count > 1 ? s.words[s.next + 1] : 0)
        }
    }

    private static func draw(_ count: Int) -> [UInt64] {
        var words = [UInt64](repeating: 0, count: count)
        #if canImport(Glibc) || canImport(Darwin)
        // glibc 2.36+ and Darwin: one getrandom(2) (or its equivalent) for the whole buffer.
        words.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
        #else
        var generator = SystemRandomNumberGenerator()
        for i in words.indices { words[i] = generator.next() }
        #endif
        return words
    }
}
