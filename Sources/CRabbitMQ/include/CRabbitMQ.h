#ifndef GANGWAY_CRABBITMQ_H
#define GANGWAY_CRABBITMQ_H

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>

/// Logs in with SASL PLAIN (`amqp_login_with_properties` is variadic, which Swift cannot
/// call), naming the connection and asking for `connection.blocked` and consumer cancel
/// notifications.
amqp_rpc_reply_t gw_login_plain(amqp_connection_state_t state, const char *vhost,
                                int channel_max, int frame_max, int heartbeat,
                                const char *user, const char *password,
                                const char *connection_name);

/// A non-blocking, close-on-exec eventfd used to wake a connection's owner thread.
int gw_eventfd_create(void);
/// Adds one to the eventfd counter; safe from any thread.
void gw_eventfd_signal(int fd);
/// Resets the eventfd counter to zero.
void gw_eventfd_drain(int fd);

/// Waits until `sockfd` is readable or `wakefd` is signalled, at most `timeout_ms`.
/// Either descriptor may be -1 to leave it out.
/// Returns a bit set: 1 socket readable (or in error), 2 woken, 0 timed out, -1 on poll error.
int gw_poll2(int sockfd, int wakefd, int timeout_ms);

/// Sets or clears TCP_CORK on a socket: while corked, the kernel holds partial segments, so
/// a batch of small frames written one by one leaves as few full segments. Returns 0 or -1.
int gw_tcp_cork(int sockfd, int on);

/// Frames waiting to be written to a connection's socket in one go, grown as needed.
typedef struct {
  uint8_t *bytes;
  size_t len;
  size_t cap;
} gw_outbuf_t;

/// Appends a method frame (its arguments encoded by rabbitmq-c) to `out`.
/// Returns AMQP_STATUS_OK or a negative amqp_status_enum.
int gw_outbuf_append_method(gw_outbuf_t *out, amqp_channel_t channel, amqp_method_number_t id,
                            void *decoded, size_t frame_max);

/// Appends what `amqp_basic_publish` sends, the same bytes: the basic.publish method frame,
/// the content header frame, then body frames of at most `frame_max` bytes. A message that
/// cannot be encoded (properties too large for a frame) leaves `out` as it was.
/// Returns AMQP_STATUS_OK or a negative amqp_status_enum.
int gw_outbuf_append_publish(gw_outbuf_t *out, amqp_channel_t channel, amqp_bytes_t exchange,
                             amqp_bytes_t routing_key, amqp_boolean_t mandatory,
                             amqp_basic_properties_t *properties, amqp_bytes_t body,
                             size_t frame_max);

/// Writes all `len` bytes to a (non-blocking) socket, waiting while the kernel's buffer is
/// full. Returns 0, or a negative errno value when the connection failed.
int gw_send_all(int sockfd, const uint8_t *bytes, size_t len);

/// Frees the buffer's memory; it can be used again.
void gw_outbuf_free(gw_outbuf_t *out);

/// Names the calling thread as the kernel shows it (at most 15 bytes; longer names are
/// refused). Returns 0 or an errno value.
int gw_set_thread_name(const char *name);

/// SHA-256 of `len` bytes into `out` (32 bytes), with the OpenSSL that rabbitmq-c's TLS uses.
/// Returns 1 on success.
int gw_sha256(const void *data, size_t len, unsigned char *out);

/// Field-value accessors: Swift imports the anonymous union poorly on some toolchains.
static inline amqp_bytes_t gw_field_bytes(const amqp_field_value_t *v) { return v->value.bytes; }
static inline amqp_table_t gw_field_table(const amqp_field_value_t *v) { return v->value.table; }
static inline amqp_array_t gw_field_array(const amqp_field_value_t *v) { return v->value.array; }

/// Makes the TLS socket's handshakes record why the server's certificate chain failed to
/// verify, for `gw_tls_take_errors`; what a failure means is left to rabbitmq-c.
void gw_tls_record_verify_errors(amqp_socket_t *socket);

/// Empties OpenSSL's error queue (and the recorded verification failure) for the calling
/// thread, before a TLS call whose failure `gw_tls_take_errors` is to explain.
void gw_tls_clear_errors(void);

/// Takes OpenSSL's reasons for the calling thread's failed TLS calls, oldest first, out of its
/// error queue into `buf` as one NUL-terminated line ("certificate verify failed; …"),
/// truncated to `len`. rabbitmq-c reports only "SSL handshake failed" or "a SSL error
/// occurred"; these say why. Returns how many reasons there were (0: the queue was empty).
size_t gw_tls_take_errors(char *buf, size_t len);

/// Method ids and property flags re-exported as typed constants: the originals are macros
/// with casts, which Swift does not import.
static const amqp_method_number_t GW_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t GW_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t GW_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t GW_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t GW_BASIC_REJECT = AMQP_BASIC_REJECT_METHOD;
static const amqp_method_number_t GW_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const amqp_method_number_t GW_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t GW_CHANNEL_CLOSE_OK = AMQP_CHANNEL_CLOSE_OK_METHOD;
static const amqp_method_number_t GW_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_method_number_t GW_CONNECTION_CLOSE_OK = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const amqp_method_number_t GW_CONNECTION_BLOCKED = AMQP_CONNECTION_BLOCKED_METHOD;
static const amqp_method_number_t GW_CONNECTION_UNBLOCKED = AMQP_CONNECTION_UNBLOCKED_METHOD;

static const amqp_flags_t GW_FLAG_CONTENT_TYPE = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const amqp_flags_t GW_FLAG_CONTENT_ENCODING = AMQP_BASIC_CONTENT_ENCODING_FLAG;
static const amqp_flags_t GW_FLAG_HEADERS = AMQP_BASIC_HEADERS_FLAG;
static const amqp_flags_t GW_FLAG_DELIVERY_MODE = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const amqp_flags_t GW_FLAG_PRIORITY = AMQP_BASIC_PRIORITY_FLAG;
static const amqp_flags_t GW_FLAG_CORRELATION_ID = AMQP_BASIC_CORRELATION_ID_FLAG;
static const amqp_flags_t GW_FLAG_REPLY_TO = AMQP_BASIC_REPLY_TO_FLAG;
static const amqp_flags_t GW_FLAG_EXPIRATION = AMQP_BASIC_EXPIRATION_FLAG;
static const amqp_flags_t GW_FLAG_MESSAGE_ID = AMQP_BASIC_MESSAGE_ID_FLAG;
static const amqp_flags_t GW_FLAG_TIMESTAMP = AMQP_BASIC_TIMESTAMP_FLAG;
static const amqp_flags_t GW_FLAG_TYPE = AMQP_BASIC_TYPE_FLAG;
static const amqp_flags_t GW_FLAG_USER_ID = AMQP_BASIC_USER_ID_FLAG;
static const amqp_flags_t GW_FLAG_APP_ID = AMQP_BASIC_APP_ID_FLAG;

#endif
