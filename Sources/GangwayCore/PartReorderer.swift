/// Puts the parts of a streamed reply back in order (`x-part` 0, 1, 2…) and says when the
/// final one (`x-final`) has been released.
///
/// Parts normally arrive in order; a worker that publishes from several tasks may not. Parts
/// ahead of the next expected one wait here, at most ``window`` of them: a gap that never
/// closes must not grow memory.
public struct PartReorderer<Part> {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case duplicate(Int)
        case afterFinal(Int)
        case windowExceeded(Int)
        case negative(Int)

        public var description: String {
            switch self {
            case .duplicate(let n):
                // What a worker that lost its connection mid-stream does: the broker delivers the
                // request again and the stream starts over.
                return "part \(n) arrived twice (a worker that lost its connection mid-stream is given the request again and starts over)"
            case .afterFinal(let n): return "part \(n) arrived after the final part"
            case .windowExceeded(let n): return "part \(n) is too far ahead of the missing ones"
            case .negative(let n): return "part number \(n) is negative"
            }
        }
    }

    public let window: Int
    public private(set) var next = 0
    public private(set) var isFinished = false
    private var waiting: [Int: (part: Part, final: Bool)] = [:]
    private var finalIndex: Int?

    public init(window: Int = 1024) {
        self.window = window
    }

    /// Accepts part `index`; returns the parts now deliverable, in order.
    public mutating func accept(_ part: Part, index: Int, final: Bool) throws(Failure) -> [Part] {
        guard index >= 0 else { throw .negative(index) }
        if let f = finalIndex, index > f { throw .afterFinal(index) }
        guard index >= next, waiting[index] == nil else { throw .duplicate(index) }
        guard index - next < window else { throw .windowExceeded(index) }
        if final {
            if let maxWaiting = waiting.keys.max(), maxWaiting > index { throw .afterFinal(maxWaiting) }
            finalIndex = index
        }
        waiting[index] = (part, final)
        var out: [Part] = []
        while let ready = waiting.removeValue(forKey: next) {
            out.append(ready.part)
            next += 1
            if ready.final {
                isFinished = true
                break
            }
        }
        return out
    }
}

extension PartReorderer: Sendable where Part: Sendable {}
