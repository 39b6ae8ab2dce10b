/*
 * The raw broker round-trip ceiling for request/reply: one rabbitmq-c connection keeps
 * IN_FLIGHT requests outstanding to a worker queue, each with reply_to = its own exclusive
 * reply queue, and sends the next one as each reply arrives. No HTTP, no edge.
 *
 *   raw_rpc HOST PORT EXCHANGE ROUTING_KEY SECONDS [IN_FLIGHT] [BODY_BYTES] [bare|contract]
 *
 * bare (the default) sends the fewest properties a reply needs. contract sends what the edge
 * sends for POST /v1/echo: every property and header of wire contract v1, mandatory, on a
 * channel in confirm mode (the confirms are read and dropped), so that the difference to the
 * edge is the edge's own work and not the message.
 *
 * Prints: requests=N seconds=S rps=R p50_ms=A p99_ms=B
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die_on(amqp_rpc_reply_t r, const char *what) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "raw_rpc: %s failed (%d)\n", what, r.reply_type);
    exit(1);
  }
}

static int64_t epoch_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: raw_rpc HOST PORT EXCHANGE ROUTING_KEY SECONDS [IN_FLIGHT] [BODY_BYTES]\n");
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]);
  const char *exchange = argv[3];
  const char *key = argv[4];
  double seconds = atof(argv[5]);
  int in_flight = argc > 6 ? atoi(argv[6]) : 64;
  int body_bytes = argc > 7 ? atoi(argv[7]) : 64;
  int contract = argc > 8 && strcmp(argv[8], "contract") == 0;
  if (argc > 8 && !contract && strcmp(argv[8], "bare") != 0) {
    fprintf(stderr, "raw_rpc: the message kind is bare or contract, not '%s'\n", argv[8]);
    return 2;
  }

  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(socket, host, port)) {
    fprintf(stderr, "raw_rpc: cannot connect\n");
    return 1;
  }
  die_on(amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
  amqp_channel_open(conn, 1);
  die_on(amqp_get_rpc_reply(conn), "channel.open");
  amqp_queue_declare_ok_t *q = amqp_queue_declare(conn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
  die_on(amqp_get_rpc_reply(conn), "queue.declare");
  amqp_bytes_t reply_queue = amqp_bytes_malloc_dup(q->queue);
  if (contract) {
    amqp_confirm_select(conn, 1);
    die_on(amqp_get_rpc_reply(conn), "confirm.select");
  }
  amqp_basic_consume(conn, 1, reply_queue, amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
  die_on(amqp_get_rpc_reply(conn), "basic.consume");

  char *body = malloc(body_bytes);
  memset(body, 'a', body_bytes);
  double *sent = calloc(in_flight, sizeof(double));
  size_t cap = 1 << 20, n = 0;
  double *lat = malloc(cap * sizeof(double));

  char corr[32];
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof(props));
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
                 AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_EXPIRATION_FLAG;
  props.content_type = amqp_cstring_bytes("text/plain");
  props.delivery_mode = 1;
  props.reply_to = reply_queue;
  props.expiration = amqp_cstring_bytes("5000");
  amqp_bytes_t body_b = {(size_t)body_bytes, body};

  // The edge's headers, with values of the same lengths (ids are 32 and 55 characters).
  amqp_table_entry_t entries[6];
  char request_id[33], traceparent[56];
  memset(request_id, 'f', 32), request_id[32] = 0;
  snprintf(traceparent, sizeof traceparent, "00-%032d-%016d-01", 7, 7);
  const char *names[5] = {"x-method", "x-path", "x-route", "x-request-id", "traceparent"};
  const char *values[5] = {"POST", "/v1/echo", "echo", request_id, traceparent};
  for (int i = 0; i < 5; i++) {
    entries[i].key = amqp_cstring_bytes(names[i]);
    entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[i].value.value.bytes = amqp_cstring_bytes(values[i]);
  }
  entries[5].key = amqp_cstring_bytes("x-deadline");
  entries[5].value.kind = AMQP_FIELD_KIND_I64;
  if (contract) {
    props._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                    AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG;
    props.headers.num_entries = 6;
    props.headers.entries = entries;
    props.type = amqp_cstring_bytes("echo");
    props.app_id = amqp_cstring_bytes("gangway");
  }

#define SEND(slot)                                                                                  \
  do {                                                                                              \
    snprintf(corr, sizeof corr, "%d", (slot));                                                      \
    props.correlation_id = amqp_cstring_bytes(corr);                                                \
    props.message_id = props.correlation_id;                                                        \
    sent[(slot)] = now_s();                                                                         \
    if (contract) {                                                                                 \
      int64_t ms = epoch_ms();                                                                      \
      props.timestamp = (uint64_t)(ms / 1000);                                                      \
      entries[5].value.value.i64 = ms + 5000;                                                       \
    }                                                                                               \
    amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key), contract, 0, &props, body_b); \
  } while (0)

  for (int i = 0; i < in_flight; i++) SEND(i);
  double start = now_s(), end = start + seconds;
  while (now_s() < end) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(conn);
    struct timeval tv = {1, 0};
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) continue;
      if (contract && r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
        // A confirm (basic.ack) between deliveries: read it and go on.
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) == AMQP_STATUS_OK && frame.frame_type == AMQP_FRAME_METHOD &&
            frame.payload.method.id == AMQP_BASIC_ACK_METHOD)
          continue;
        fprintf(stderr, "raw_rpc: unexpected frame (a returned message: is the worker running?)\n");
        return 1;
      }
      fprintf(stderr, "raw_rpc: consume failed\n");
      return 1;
    }
    char buf[32];
    size_t len = env.message.properties.correlation_id.len < 31 ? env.message.properties.correlation_id.len : 31;
    memcpy(buf, env.message.properties.correlation_id.bytes, len);
    buf[len] = 0;
    int slot = atoi(buf);
    double t = now_s();
    if (n == cap) {
      cap *= 2;
      lat = realloc(lat, cap * sizeof(double));
    }
    lat[n++] = t - sent[slot];
    amqp_destroy_envelope(&env);
    SEND(slot);
  }
  double elapsed = now_s() - start;
  qsort(lat, n, sizeof(double), cmp);
  printf("requests=%zu seconds=%.2f rps=%.0f p50_ms=%.2f p99_ms=%.2f\n", n, elapsed, n / elapsed,
         n ? lat[n / 2] * 1000 : 0, n ? lat[(size_t)(n * 0.99)] * 1000 : 0);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return 0;
}
