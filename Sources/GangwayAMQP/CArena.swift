import CRabbitMQ
import GangwayAMQPCore

/// Owns the C memory built for one call into rabbitmq-c (tables, strings) and frees it after.
///
/// Only used on a connection's owner thread, for the duration of one call. Everything is
/// carved out of one slab kept from call to call, so a publish (a dozen strings and a header
/// table) costs no allocation; what does not fit in the slab's rest is allocated on its own
/// and freed at ``reset()``.
final class CArena {
    /// Enough for a request's properties and headers with room to spare.
    static let slabBytes = 8192

    private let slab = UnsafeMutableRawPointer.allocate(byteCount: CArena.slabBytes, alignment: 16)
    private var slabUsed = 0
    private var overflow: [UnsafeMutableRawPointer] = []

    deinit {
        reset()
        slab.deallocate()
    }

    /// Frees everything allocated so far; the arena can be used again.
    func reset() {
        slabUsed = 0
        for p in overflow { p.deallocate() }
        overflow.removeAll(keepingCapacity: true)
    }

    /// Memory for `count` values of `type`, uninitialized, valid until ``reset()``.
    private func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let byteCount = MemoryLayout<T>.stride * count
        let alignment = MemoryLayout<T>.alignment
        let start = (slabUsed + alignment - 1) & ~(alignment - 1)
        let raw: UnsafeMutableRawPointer
        if start + byteCount <= Self.slabBytes {
            slabUsed = start + byteCount
            raw = slab + start
        } else {
            raw = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: alignment)
            overflow.append(raw)
        }
        return raw.bindMemory(to: T.self, capacity: count)
    }

    /// The slab's bytes in use, for tests.
    var slabBytesUsed: Int { slabUsed }

    /// The allocations outside the slab, for tests.
    var overflowCount: Int { overflow.count }

    func bytes(_ string: String) -> amqp_bytes_t {
        var string = string
        return string.withUTF8 { bytes($0) }
    }

    func bytes(_ buffer: UnsafeBufferPointer<UInt8>) -> amqp_bytes_t {
        guard buffer.count > 0, let source = buffer.baseAddress else { return amqp_bytes_t(len: 0, bytes: nil) }
        let p = allocate(UInt8.self, count: buffer.count)
        p.initialize(from: source, count: buffer.count)
        return amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(p))
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let entries = allocate(amqp_table_entry_t.self, count: table.count)
        for (i, (key, value)) in table.enumerated() {
            (entries + i).initialize(to: amqp_table_entry_t(key: bytes(key), value: field(value)))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var f = amqp_field_value_t()
        switch value {
        case .bool(let b):
            f.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            f.value.boolean = b ? 1 : 0
        case .int(let i):
            f.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            f.value.i64 = i
        case .double(let d):
            f.kind = UInt8(AMQP_FIELD_KIND_F64.rawValue)
            f.value.f64 = d
        case .string(let s):
            f.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            f.value.bytes = bytes(s)
        case .bytes(let b):
            f.kind = UInt8(AMQP_FIELD_KIND_BYTES.rawValue)
            f.value.bytes = b.withUnsafeBufferPointer { bytes($0) }
        case .timestamp(let t):
            f.kind = UInt8(AMQP_FIELD_KIND_TIMESTAMP.rawValue)
            f.value.u64 = t
        case .table(let t):
            f.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            f.value.table = table(t)
        case .array(let items):
            f.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            let entries = allocate(amqp_field_value_t.self, count: max(items.count, 1))
            for (i, item) in items.enumerated() { (entries + i).initialize(to: field(item)) }
            f.value.array = amqp_array_t(num_entries: Int32(items.count), entries: entries)
        case .void:
            f.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return f
    }

    func properties(_ p: AMQPProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: amqp_flags_t = 0
        if let v = p.contentType { c.content_type = bytes(v); flags |= GW_FLAG_CONTENT_TYPE }
        if let v = p.contentEncoding { c.content_encoding = bytes(v); flags |= GW_FLAG_CONTENT_ENCODING }
        if !p.headers.isEmpty { c.headers = table(p.headers); flags |= GW_FLAG_HEADERS }
        if let v = p.deliveryMode { c.delivery_mode = v; flags |= GW_FLAG_DELIVERY_MODE }
        if let v = p.priority { c.priority = v; flags |= GW_FLAG_PRIORITY }
        if let v = p.correlationID { c.correlation_id = bytes(v); flags |= GW_FLAG_CORRELATION_ID }
        if let v = p.replyTo { c.reply_to = bytes(v); flags |= GW_FLAG_REPLY_TO }
        if let v = p.expiration { c.expiration = bytes(v); flags |= GW_FLAG_EXPIRATION }
        if let v = p.messageID { c.message_id = bytes(v); flags |= GW_FLAG_MESSAGE_ID }
        if let v = p.timestamp { c.timestamp = v; flags |= GW_FLAG_TIMESTAMP }
        if let v = p.type { c.type = bytes(v); flags |= GW_FLAG_TYPE }
        if let v = p.userID { c.user_id = bytes(v); flags |= GW_FLAG_USER_ID }
        if let v = p.appID { c.app_id = bytes(v); flags |= GW_FLAG_APP_ID }
        c._flags = flags
        return c
    }
}

/// Decoding from rabbitmq-c's structures into Swift values (copies; the C memory is pooled).
enum CDecode {
    static func string(_ b: amqp_bytes_t) -> String {
        guard b.len > 0, let p = b.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: b.len), as: UTF8.self)
    }

    static func byteArray(_ b: amqp_bytes_t) -> [UInt8] {
        guard b.len > 0, let p = b.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: b.len))
    }

    static func table(_ t: amqp_table_t) -> AMQPTable {
        guard t.num_entries > 0, let entries = t.entries else { return AMQPTable() }
        // Built whole, then checked for repeated keys once (a peer may repeat one; the last
        // value counts), rather than searched entry by entry.
        return AMQPTable(count: Int(t.num_entries)) { (key: string(entries[$0].key), value: field(entries[$0].value)) }
    }

    static func field(_ f: amqp_field_value_t) -> AMQPFieldValue {
        var f = f
        switch UInt32(f.kind) {
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(f.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: return .int(Int64(f.value.i8))
        case AMQP_FIELD_KIND_U8.rawValue: return .int(Int64(f.value.u8))
        case AMQP_FIELD_KIND_I16.rawValue: return .int(Int64(f.value.i16))
        case AMQP_FIELD_KIND_U16.rawValue: return .int(Int64(f.value.u16))
        case AMQP_FIELD_KIND_I32.rawValue: return .int(Int64(f.value.i32))
        case AMQP_FIELD_KIND_U32.rawValue: return .int(Int64(f.value.u32))
        case AMQP_FIELD_KIND_I64.rawValue: return .int(f.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue: return .int(Int64(truncatingIfNeeded: f.value.u64))
        case AMQP_FIELD_KIND_F32.rawValue: return .double(Double(f.value.f32))
        case AMQP_FIELD_KIND_F64.rawValue: return .double(f.value.f64)
        case AMQP_FIELD_KIND_DECIMAL.rawValue:
            let d = f.value.decimal
            var v = Double(d.value)
            for _ in 0..<d.decimals { v /= 10 }
            return .double(v)
        case AMQP_FIELD_KIND_UTF8.rawValue: return .string(string(gw_field_bytes(&f)))
        case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes(byteArray(gw_field_bytes(&f)))
        case AMQP_FIELD_KIND_TIMESTAMP.rawValue: return .timestamp(f.value.u64)
        case AMQP_FIELD_KIND_TABLE.rawValue: return .table(table(gw_field_table(&f)))
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let a = gw_field_array(&f)
            guard a.num_entries > 0, let entries = a.entries else { return .array([]) }
            return .array((0..<Int(a.num_entries)).map { field(entries[$0]) })
        default: return .void
        }
    }

    static func properties(_ c: amqp_basic_properties_t) -> AMQPProperties {
        let flags = c._flags
        var p = AMQPProperties()
        if flags & GW_FLAG_CONTENT_TYPE != 0 { p.contentType = string(c.content_type) }
        if flags & GW_FLAG_CONTENT_ENCODING != 0 { p.contentEncoding = string(c.content_encoding) }
        if flags & GW_FLAG_HEADERS != 0 { p.headers = table(c.headers) }
        if flags & GW_FLAG_DELIVERY_MODE != 0 { p.deliveryMode = c.delivery_mode }
        if flags & GW_FLAG_PRIORITY != 0 { p.priority = c.priority }
        if flags & GW_FLAG_CORRELATION_ID != 0 { p.correlationID = string(c.correlation_id) }
        if flags & GW_FLAG_REPLY_TO != 0 { p.replyTo = string(c.reply_to) }
        if flags & GW_FLAG_EXPIRATION != 0 { p.expiration = string(c.expiration) }
        if flags & GW_FLAG_MESSAGE_ID != 0 { p.messageID = string(c.message_id) }
        if flags & GW_FLAG_TIMESTAMP != 0 { p.timestamp = c.timestamp }
        if flags & GW_FLAG_TYPE != 0 { p.type = string(c.type) }
        if flags & GW_FLAG_USER_ID != 0 { p.userID = string(c.user_id) }
        if flags & GW_FLAG_APP_ID != 0 { p.appID = string(c.app_id) }
        return p
    }
}
