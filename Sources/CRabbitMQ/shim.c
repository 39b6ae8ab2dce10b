#define _GNU_SOURCE
#include "CRabbitMQ.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

amqp_rpc_reply_t gw_login_plain(amqp_connection_state_t state, const char *vhost,
                                int channel_max, int frame_max, int heartbeat,
                                const char *user, const char *password,
                                const char *connection_name) {
  // rabbitmq-c merges these into its own client properties (capabilities included).
  // Without the connection.blocked capability the broker blocks a publishing connection
  // during a resource alarm without saying so, and publishes just wait. Without
  // consumer_cancel_notify it drops a consumer whose queue is deleted without a word: the
  // consumer waits forever on a queue that no longer exists, instead of getting a
  // basic.cancel, reconnecting, declaring the queue again and consuming from it.
  amqp_table_entry_t capabilities[2];
  capabilities[0].key = amqp_cstring_bytes("connection.blocked");
  capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  capabilities[0].value.value.boolean = 1;
  capabilities[1].key = amqp_cstring_bytes("consumer_cancel_notify");
  capabilities[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  capabilities[1].value.value.boolean = 1;
  amqp_table_entry_t entries[2];
  entries[0].key = amqp_cstring_bytes("capabilities");
  entries[0].value.kind = AMQP_FIELD_KIND_TABLE;
  entries[0].value.value.table.num_entries = 2;
  entries[0].value.value.table.entries = capabilities;
  entries[1].key = amqp_cstring_bytes("connection_name");
  entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[1].value.value.bytes = amqp_cstring_bytes(connection_name);
  amqp_table_t properties = {.num_entries = 2, .entries = entries};
  return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                    &properties, AMQP_SASL_METHOD_PLAIN, user, password);
}

int gw_eventfd_create(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

void gw_eventfd_signal(int fd) {
  uint64_t one = 1;
  ssize_t ignored = write(fd, &one, sizeof(one));
  (void)ignored;
}

void gw_eventfd_drain(int fd) {
  uint64_t value;
  ssize_t ignored = read(fd, &value, sizeof(value));
  (void)ignored;
}

int gw_poll2(int sockfd, int wakefd, int timeout_ms) {
  struct pollfd fds[2];
  int n = 0;
  if (sockfd >= 0) {
    fds[n].fd = sockfd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    n++;
  }
  int wake_index = -1;
  if (wakefd >= 0) {
    fds[n].fd = wakefd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    wake_index = n;
    n++;
  }
  int rc = poll(fds, n, timeout_ms);
  if (rc < 0) return -1;
  int result = 0;
  if (sockfd >= 0 && fds[0].revents != 0) result |= 1;
  if (wake_index >= 0 && fds[wake_index].revents != 0) result |= 2;
  return result;
}

int gw_tcp_cork(int sockfd, int on) {
  return setsockopt(sockfd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

int gw_set_thread_name(const char *name) {
  return pthread_setname_np(pthread_self(), name);
}

int gw_sha256(const void *data, size_t len, unsigned char *out) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

// MARK: Outbound frames written in one go

static int gw_outbuf_reserve(gw_outbuf_t *out, size_t more) {
  if (out->cap - out->len >= more) return 0;
  size_t cap = out->cap ? out->cap : 4096;
  while (cap - out->len < more) cap *= 2;
  uint8_t *bytes = realloc(out->bytes, cap);
  if (bytes == NULL) return AMQP_STATUS_NO_MEMORY;
  out->bytes = bytes;
  out->cap = cap;
  return 0;
}

static void gw_put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void gw_put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void gw_put64(uint8_t *p, uint64_t v) {
  gw_put32(p, (uint32_t)(v >> 32));
  gw_put32(p + 4, (uint32_t)v);
}

// A frame is type (1), channel (2), payload size (4), the payload, then the frame-end octet.
enum { GW_FRAME_OVERHEAD = 8 };

int gw_outbuf_append_method(gw_outbuf_t *out, amqp_channel_t channel, amqp_method_number_t id,
                            void *decoded, size_t frame_max) {
  size_t room = frame_max - GW_FRAME_OVERHEAD;
  int rc = gw_outbuf_reserve(out, frame_max);
  if (rc != 0) return rc;
  uint8_t *frame = out->bytes + out->len;
  amqp_bytes_t args = {room - 4, frame + 7 + 4};
  int size = amqp_encode_method(id, decoded, args);
  if (size < 0) return size;
  frame[0] = AMQP_FRAME_METHOD;
  gw_put16(frame + 1, channel);
  gw_put32(frame + 3, (uint32_t)(4 + size));
  gw_put32(frame + 7, id);
  frame[7 + 4 + size] = AMQP_FRAME_END;
  out->len += GW_FRAME_OVERHEAD + 4 + (size_t)size;
  return AMQP_STATUS_OK;
}

int gw_outbuf_append_publish(gw_outbuf_t *out, amqp_channel_t channel, amqp_bytes_t exchange,
                             amqp_bytes_t routing_key, amqp_boolean_t mandatory,
                             amqp_basic_properties_t *properties, amqp_bytes_t body,
                             size_t frame_max) {
  if (frame_max <= GW_FRAME_OVERHEAD + 12) return AMQP_STATUS_INVALID_PARAMETER;
  size_t start = out->len;
  amqp_basic_publish_t method = {
      .ticket = 0, .exchange = exchange, .routing_key = routing_key,
      .mandatory = mandatory, .immediate = 0};
  int rc = gw_outbuf_append_method(out, channel, AMQP_BASIC_PUBLISH_METHOD, &method, frame_max);
  if (rc != AMQP_STATUS_OK) return rc;

  // Content header: class, weight, body size, then the property flags and values.
  rc = gw_outbuf_reserve(out, frame_max);
  if (rc != 0) goto fail;
  uint8_t *frame = out->bytes + out->len;
  amqp_bytes_t encoded = {frame_max - GW_FRAME_OVERHEAD - 12, frame + 7 + 12};
  int size = amqp_encode_properties(AMQP_BASIC_CLASS, properties, encoded);
  if (size < 0) {
    rc = size;
    goto fail;
  }
  frame[0] = AMQP_FRAME_HEADER;
  gw_put16(frame + 1, channel);
  gw_put32(frame + 3, (uint32_t)(12 + size));
  gw_put16(frame + 7, AMQP_BASIC_CLASS);
  gw_put16(frame + 9, 0);
  gw_put64(frame + 11, body.len);
  frame[7 + 12 + size] = AMQP_FRAME_END;
  out->len += GW_FRAME_OVERHEAD + 12 + (size_t)size;

  // Body frames of at most frame_max bytes each (none for an empty body).
  size_t chunk = frame_max - GW_FRAME_OVERHEAD;
  size_t frames = (body.len + chunk - 1) / chunk;
  rc = gw_outbuf_reserve(out, body.len + frames * GW_FRAME_OVERHEAD);
  if (rc != 0) goto fail;
  for (size_t offset = 0; offset < body.len; offset += chunk) {
    size_t n = body.len - offset < chunk ? body.len - offset : chunk;
    frame = out->bytes + out->len;
    frame[0] = AMQP_FRAME_BODY;
    gw_put16(frame + 1, channel);
    gw_put32(frame + 3, (uint32_t)n);
    memcpy(frame + 7, (const uint8_t *)body.bytes + offset, n);
    frame[7 + n] = AMQP_FRAME_END;
    out->len += GW_FRAME_OVERHEAD + n;
  }
  return AMQP_STATUS_OK;

fail:
  out->len = start;  // nothing of a message that cannot be encoded goes out
  return rc;
}

int gw_send_all(int sockfd, const uint8_t *bytes, size_t len) {
  size_t sent = 0;
  while (sent < len) {
    ssize_t n = send(sockfd, bytes + sent, len - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The broker reads slowly (or not at all, during a resource alarm): wait until it does.
      struct pollfd fd = {.fd = sockfd, .events = POLLOUT, .revents = 0};
      if (poll(&fd, 1, 1000) < 0 && errno != EINTR) return -errno;
      continue;
    }
    return n == 0 ? -EPIPE : -errno;
  }
  return 0;
}

void gw_outbuf_free(gw_outbuf_t *out) {
  free(out->bytes);
  out->bytes = NULL;
  out->len = 0;
  out->cap = 0;
}

/// The first failure of the server's certificate chain in this thread's handshake, or 0.
static __thread int gw_tls_verify_error = 0;

static int gw_tls_verify_callback(int preverify_ok, X509_STORE_CTX *store) {
  if (!preverify_ok && gw_tls_verify_error == 0) gw_tls_verify_error = X509_STORE_CTX_get_error(store);
  // Change nothing: rabbitmq-c decides what a failed verification means.
  SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
  return ssl != NULL && (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) ? preverify_ok : 1;
}

void gw_tls_record_verify_errors(amqp_socket_t *socket) {
  SSL_CTX *ctx = amqp_ssl_socket_get_context(socket);
  if (ctx != NULL) SSL_CTX_set_verify(ctx, SSL_CTX_get_verify_mode(ctx), gw_tls_verify_callback);
}

void gw_tls_clear_errors(void) {
  ERR_clear_error();
  gw_tls_verify_error = 0;
}

size_t gw_tls_take_errors(char *buf, size_t len) {
  size_t used = 0, count = 0;
  char last[256] = "";
  if (len > 0) buf[0] = 0;
  if (gw_tls_verify_error != 0) {
    // What was wrong with the server's certificate ("unable to get local issuer
    // certificate", "certificate has expired"), which OpenSSL's error queue does not hold.
    int n = snprintf(buf, len, "server certificate: %s", X509_verify_cert_error_string(gw_tls_verify_error));
    if (n > 0) used = (size_t)n < len ? (size_t)n : (len > 0 ? len - 1 : 0);
    gw_tls_verify_error = 0;
    count++;
  }
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    char reason[256];
    const char *text = ERR_reason_error_string(code);
    if (text != NULL) {
      snprintf(reason, sizeof reason, "%s", text);
    } else {
      ERR_error_string_n(code, reason, sizeof reason);
    }
    // OpenSSL may record one reason twice as the failure unwinds: say it once.
    if (strcmp(reason, last) == 0) continue;
    memcpy(last, reason, sizeof last);
    count++;
    if (used + 1 >= len) continue;
    int n = snprintf(buf + used, len - used, "%s%s", count > 1 ? "; " : "", reason);
    if (n < 0) continue;
    used = used + (size_t)n < len ? used + (size_t)n : len - 1;
  }
  return count;
}
