/// A value in an AMQP 0-9-1 field table (message headers, declaration arguments).
///
/// Only the types RabbitMQ itself produces are modelled; decoding maps the rarer
/// integer widths onto ``int``.
public enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case timestamp(UInt64)
    case table(AMQPTable)
    case array([AMQPFieldValue])
    case void

    /// The value as text, when it is text or a number; `nil` otherwise.
    ///
    /// Workers in other languages send numbers as strings and strings as numbers; the wire
    /// contract accepts both for `x-status`, `x-part` and friends.
    public var stringValue: String? {
        switch self {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .bool(let b): return b ? "true" : "false"
        case .bytes(let b): return String(decoding: b, as: UTF8.self)
        case .timestamp(let t): return String(t)
        case .table, .array, .void: return nil
        }
    }

    /// The value as an integer when it is one, or text that parses as one.
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .timestamp(let t): return Int64(exactly: t)
        case .double(let d): return Int64(exactly: d)
        case .string, .bytes: return stringValue.flatMap { Int64($0.trimmingWhitespace()) }
        case .bool, .table, .array, .void: return nil
        }
    }

    /// The value as a boolean when it is one, or the text `true` / `false`, or 0 / 1.
    public var boolValue: Bool? {
        switch self {
        case .bool(let b): return b
        case .int(let i): return i == 0 ? false : (i == 1 ? true : nil)
        case .string, .bytes:
            switch stringValue?.trimmingWhitespace().lowercased() {
            case "true", "1": return true
            case "false", "0": return false
            default: return nil
            }
        default: return nil
        }
    }
}

/// An AMQP field table (message headers, declaration arguments): each key has one value, and
/// the order of the keys is not significant, on the wire or to `==`.
///
/// Its entries are kept in an array, not a hash table: a message's headers are a handful of
/// short keys, built once and read a few times per message, and comparing a few keys costs
/// less than hashing them (the edge builds a table for every request and decodes one from
/// every reply; a worker does the reverse). Setting a key replaces its value where it is;
/// a new key goes to the end, and iteration follows that order.
public struct AMQPTable: Sendable, Hashable, ExpressibleByDictionaryLiteral, Sequence, CustomStringConvertible {
    public typealias Element = (key: String, value: AMQPFieldValue)

    /// A struct, not a tuple: an array of tuples is copied and destroyed through the runtime's
    /// generic tuple witnesses.
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var key: String
        @usableFromInline var value: AMQPFieldValue

        @inlinable
        init(key: String, value: AMQPFieldValue) {
            self.key = key
            self.value = value
        }
    }

    @usableFromInline
    var entries: [Entry]

    @inlinable
    public init() {
        entries = []
    }

    /// A table of `count` entries, the `i`th given by `entry(i)`; where a key comes more than
    /// once, its last value counts (as when a table read from the wire repeats a key).
    @inlinable
    public init(count: Int, entry: (Int) -> Element) {
        entries = []
        entries.reserveCapacity(count)
        for i in 0..<count {
            let (key, value) = entry(i)
            entries.append(Entry(key: key, value: value))
        }
        removeRepeatedKeys()
    }

    /// - Precondition: the keys differ (checked in debug builds, as a dictionary literal's are
    ///   always): a literal is written with the keys it means.
    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) {
        entries = []
        entries.reserveCapacity(elements.count)
        for (key, value) in elements {
            assert(!entries.contains(where: { $0.key == key }), "AMQPTable literal repeats the key '\(key)'")
            entries.append(Entry(key: key, value: value))
        }
    }

    /// Keeps the last entry of each key.
    @usableFromInline
    mutating func removeRepeatedKeys() {
        guard entries.count > 1 else { return }
        if entries.count <= 16 {
            // Few entries: compare each key with the ones after it.
            var i = entries.count - 1
            while i > 0 {
                i -= 1
                let key = entries[i].key
                if entries[(i + 1)...].contains(where: { $0.key == key }) { entries.remove(at: i) }
            }
        } else {
            // Many: one pass with a set, from the end, so that the last value of a key stays.
            var seen = Set<String>(minimumCapacity: entries.count)
            var kept: [Entry] = []
            kept.reserveCapacity(entries.count)
            for entry in entries.reversed() where seen.insert(entry.key).inserted { kept.append(entry) }
            entries = kept.reversed()
        }
    }

    @inlinable
    public subscript(key: String) -> AMQPFieldValue? {
        get {
            for entry in entries where entry.key == key { return entry.value }
            return nil
        }
        set {
            if let i = entries.firstIndex(where: { $0.key == key }) {
                if let newValue { entries[i].value = newValue } else { entries.remove(at: i) }
            } else if let newValue {
                entries.append(Entry(key: key, value: newValue))
            }
        }
    }

    @inlinable
    public var count: Int { entries.count }

    @inlinable
    public var isEmpty: Bool { entries.isEmpty }

    @inlinable
    public mutating func reserveCapacity(_ minimumCapacity: Int) {
        entries.reserveCapacity(minimumCapacity)
    }

    public struct Iterator: IteratorProtocol {
        @usableFromInline
        var base: IndexingIterator<[Entry]>

        @inlinable
        init(base: IndexingIterator<[Entry]>) {
            self.base = base
        }

        @inlinable
        public mutating func next() -> Element? {
            guard let entry = base.next() else { return nil }
            return (entry.key, entry.value)
        }
    }

    @inlinable
    public func makeIterator() -> Iterator {
        Iterator(base: entries.makeIterator())
    }

    @inlinable
    public var underestimatedCount: Int { entries.count }

    /// The same keys with the same values, in any order.
    public static func == (lhs: AMQPTable, rhs: AMQPTable) -> Bool {
        guard lhs.count == rhs.count else { return false }
        return lhs.entries.allSatisfy { rhs[$0.key] == $0.value }
    }

    /// Independent of the order of the entries, as `==` is.
    public func hash(into hasher: inout Hasher) {
        var sum = 0
        for entry in entries {
            var h = Hasher()
            h.combine(entry.key)
            h.combine(entry.value)
            sum &+= h.finalize()
        }
        hasher.combine(entries.count)
        hasher.combine(sum)
    }

    public var description: String {
        entries.isEmpty ? "[:]" : "[" + entries.map { "\(String(reflecting: $0.key)): \($0.value)" }.joined(separator: ", ") + "]"
    }
}

extension AMQPFieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension String {
    func trimmingWhitespace() -> Substring {
        var s = self[...]
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}
