/*
 * relayd.ws._cwire: the compiled half of relayd's WebSocket wire path.
 *
 * FrameReader turns the bytes a client sends (RFC 6455, server side: every frame masked) into
 * events, one Python object per complete message, with unmasking, fragmentation, interleaved
 * control frames, frame and message size limits and incremental UTF-8 validation done here.
 * relayd/ws/reader.py is its pure-Python twin with the same API and the same decisions;
 * tests/test_wire_reader.py holds both to Autobahn's own parser.
 *
 * send_many writes one prepared frame to many sockets with one call, for the fan-out path in
 * relayd/ws/_writes.py: what a socket does not take is handed back to Twisted's buffer there.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* event kinds, as in relayd/ws/reader.py */
#define EV_ERROR (-1)
#define OP_CONT 0
#define OP_TEXT 1
#define OP_BINARY 2
#define OP_CLOSE 8
#define OP_PING 9
#define OP_PONG 10

/* ---- UTF-8: Bjoern Hoehrmann's DFA, the validator Autobahn uses ---------------------------- */

#define UTF8_ACCEPT 0
#define UTF8_REJECT 1

static const uint8_t utf8d[] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,
    7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,
    8,8,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
    10,3,3,3,3,3,3,3,3,3,3,3,3,4,3,3,11,6,6,6,5,8,8,8,8,8,8,8,8,8,8,8,
    0,1,2,3,5,8,7,1,1,1,4,6,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,1,1,1,1,0,1,0,1,1,1,1,1,1,
    1,2,1,1,1,1,1,2,1,2,1,1,1,1,1,1,1,1,1,1,1,1,1,2,1,1,1,1,1,1,1,1,
    1,2,1,1,1,1,1,1,1,2,1,1,1,1,1,1,1,1,1,1,1,1,1,3,1,3,1,1,1,1,1,1,
    1,3,1,1,1,1,1,3,1,3,1,1,1,1,1,1,1,3,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};

/* Returns the DFA state after p[0..n); UTF8_REJECT as soon as a byte cannot continue. */
static uint32_t
utf8_run(uint32_t state, const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        if (state == UTF8_ACCEPT) {
            /* ASCII runs, eight bytes at a time */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
        }
        uint32_t type = utf8d[p[i]];
        state = utf8d[256 + state * 16 + type];
        if (state == UTF8_REJECT)
            return state;
        i++;
    }
    return state;
}

/* ---- unmasking --------------------------------------------------------------------------- */

/* dst[i] = src[i] ^ mask[(offset + i) % 4]; dst may equal src */
static void
unmask(uint8_t *dst, const uint8_t *src, Py_ssize_t n, const uint8_t mask[4], unsigned offset)
{
    uint8_t rot[8];
    for (int k = 0; k < 8; k++)
        rot[k] = mask[(offset + k) & 3];
    uint64_t m;
    memcpy(&m, rot, 8);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= m;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ rot[i & 7];
}

/* ---- a growable byte buffer ---------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    uint8_t *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static void
buf_clear(Buf *b)
{
    /* a large message's buffer is not kept for the life of the connection */
    if (b->cap > 65536) {
        PyMem_Free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    b->len = 0;
}

/* ---- FrameReader -------------------------------------------------------------------------- */

enum { S_HEADER = 0, S_PAYLOAD = 1, S_DONE = 2 };

typedef struct {
    PyObject_HEAD
    /* limits: 0 is none */
    unsigned long long max_frame;
    unsigned long long max_message;
    int require_mask;
    int validate_utf8;

    int state;
    int failed;           /* an error was reported: frame on, deliver only close frames */
    uint8_t hdr[14];
    int hdr_len;

    /* the frame being read */
    int opcode;
    int fin;
    int masked;
    int discard;          /* payload read and dropped (after an error) */
    uint8_t mask[4];
    unsigned mask_offset;
    unsigned long long remaining;

    /* the data message being read */
    int in_message;
    int message_opcode;
    unsigned long long message_length;
    uint32_t utf8;
    int check_utf8;
    Buf message;

    /* the control frame being read (at most 125 bytes) */
    uint8_t control[125];
    int control_len;
    int control_keep;     /* its payload fits: kept (otherwise only a failed close frame, read and dropped) */
} FrameReader;

static int
emit(PyObject *events, long kind, PyObject *payload)
{
    PyObject *k = PyLong_FromLong(kind);
    if (k == NULL) {
        Py_DECREF(payload);
        return -1;
    }
    int rc = PyList_Append(events, k);
    Py_DECREF(k);
    if (rc == 0)
        rc = PyList_Append(events, payload);
    Py_DECREF(payload);
    return rc;
}

/* Report the first error and keep framing; later errors are not reported. */
static int
fail(FrameReader *self, PyObject *events, int code, const char *reason)
{
    self->discard = 1;
    if (self->failed)
        return 0;
    self->failed = 1;
    self->in_message = 0;
    buf_clear(&self->message);
    PyObject *payload = Py_BuildValue("(is)", code, reason);
    if (payload == NULL)
        return -1;
    return emit(events, EV_ERROR, payload);
}

static int
FrameReader_init(FrameReader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_frame", "max_message", "require_mask", "validate_utf8", NULL};
    unsigned long long max_frame = 0, max_message = 0;
    int require_mask = 1, validate_utf8 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|KKpp", kwlist, &max_frame, &max_message,
                                     &require_mask, &validate_utf8))
        return -1;
    self->max_frame = max_frame;
    self->max_message = max_message;
    self->require_mask = require_mask;
    self->validate_utf8 = validate_utf8;
    return 0;
}

static void
FrameReader_dealloc(FrameReader *self)
{
    PyMem_Free(self->message.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/*
 * A complete header in self->hdr: check it in Autobahn's order, then set up the frame.
 * Returns -1 on a Python error, 0 otherwise (a protocol error is an event, and the frame is
 * then read and dropped so the stream stays framed).
 */
static int
begin_frame(FrameReader *self, PyObject *events, unsigned long long length)
{
    int op = self->opcode;
    self->discard = self->failed;
    self->mask_offset = 0;
    if (self->masked)
        memcpy(self->mask, self->hdr + self->hdr_len - 4, 4);
    self->remaining = length;
    if (op > 7) {
        self->control_len = 0;
        self->control_keep = length <= 125 && (op != OP_CLOSE || length != 1);
        /* after an error only a close frame still matters, whatever its form: it ends the closing
           handshake; one of a size no close frame may have is delivered empty */
        if (self->failed && op == OP_CLOSE)
            self->discard = 0;
        return 0;
    }
    if (self->discard)
        return 0;
    if (!self->in_message) {
        self->in_message = 1;
        self->message_opcode = op;
        self->message_length = 0;
        self->message.len = 0;
        self->check_utf8 = (op == OP_TEXT) && self->validate_utf8;
        self->utf8 = UTF8_ACCEPT;
    }
    self->message_length += length;
    if (self->max_message && self->message_length > self->max_message)
        return fail(self, events, 1009, "message exceeds the size limit");
    if (self->max_frame && length > self->max_frame)
        return fail(self, events, 1009, "frame exceeds the size limit");
    return 0;
}

/* Header checks that need only the first two bytes; Autobahn's order. */
static int
check_first_bytes(FrameReader *self, PyObject *events)
{
    uint8_t b0 = self->hdr[0], b1 = self->hdr[1];
    int op = b0 & 0x0F, len1 = b1 & 0x7F;
    self->fin = (b0 & 0x80) != 0;
    self->opcode = op;
    self->masked = (b1 & 0x80) != 0;
    if (b0 & 0x70)
        return fail(self, events, 1002, "RSV bits set and no extension negotiated");
    if (self->require_mask && !self->masked)
        return fail(self, events, 1002, "unmasked client-to-server frame");
    if (op > 7) {
        if (!self->fin)
            return fail(self, events, 1002, "fragmented control frame");
        if (len1 > 125)
            return fail(self, events, 1002, "control frame with payload length > 125 octets");
        if (op != OP_CLOSE && op != OP_PING && op != OP_PONG)
            return fail(self, events, 1002, "control frame using reserved opcode");
        if (op == OP_CLOSE && len1 == 1)
            return fail(self, events, 1002, "close frame with payload length 1");
    } else {
        if (op > OP_BINARY)
            return fail(self, events, 1002, "data frame using reserved opcode");
        if (!self->in_message && op == OP_CONT)
            return fail(self, events, 1002, "continuation frame outside a fragmented message");
        if (self->in_message && op != OP_CONT)
            return fail(self, events, 1002, "new data frame inside a fragmented message");
    }
    return 0;
}

static int
header_length(const uint8_t *hdr)
{
    int len1 = hdr[1] & 0x7F;
    int n = 2 + ((hdr[1] & 0x80) ? 4 : 0);
    if (len1 == 126)
        n += 2;
    else if (len1 == 127)
        n += 8;
    return n;
}

static int
end_frame(FrameReader *self, PyObject *events)
{
    int op = self->opcode;
    self->state = S_HEADER;
    self->hdr_len = 0;
    if (self->discard) {
        self->discard = self->failed;
        return 0;
    }
    if (op > 7) {
        PyObject *payload = PyBytes_FromStringAndSize((const char *)self->control, self->control_len);
        if (payload == NULL)
            return -1;
        if (op == OP_CLOSE)
            self->state = S_DONE;  /* nothing after a close frame is read */
        return emit(events, op, payload);
    }
    if (!self->fin)
        return 0;
    if (self->check_utf8 && self->utf8 != UTF8_ACCEPT)
        return fail(self, events, 1007, "text message ends inside a UTF-8 sequence");
    self->in_message = 0;
    PyObject *payload = PyBytes_FromStringAndSize((const char *)self->message.data, self->message.len);
    buf_clear(&self->message);
    if (payload == NULL)
        return -1;
    return emit(events, self->message_opcode, payload);
}

/* Payload bytes of the current frame: unmasked into the message (or control) buffer. */
static int
take_payload(FrameReader *self, PyObject *events, const uint8_t *p, Py_ssize_t n)
{
    self->remaining -= (unsigned long long)n;
    if (self->discard)
        return 0;
    uint8_t *dst;
    if (self->opcode > 7) {
        if (!self->control_keep)
            return 0;
        dst = self->control + self->control_len;
        self->control_len += (int)n;
    } else {
        if (buf_reserve(&self->message, n) < 0)
            return -1;
        dst = self->message.data + self->message.len;
        self->message.len += n;
    }
    if (self->masked) {
        unmask(dst, p, n, self->mask, self->mask_offset);
        self->mask_offset = (unsigned)((self->mask_offset + n) & 3);
    } else {
        memcpy(dst, p, n);
    }
    if (self->opcode <= 7 && self->check_utf8) {
        self->utf8 = utf8_run(self->utf8, dst, n);
        if (self->utf8 == UTF8_REJECT)
            return fail(self, events, 1007, "invalid UTF-8 in a text message");
    }
    return 0;
}

/*
 * The common case in one step: a whole unfragmented text or binary frame within the input,
 * unmasked straight into the bytes object that is delivered.
 */
static int
whole_message(FrameReader *self, PyObject *events, const uint8_t *p, Py_ssize_t n)
{
    PyObject *payload = PyBytes_FromStringAndSize(NULL, n);
    if (payload == NULL)
        return -1;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(payload);
    if (self->masked)
        unmask(dst, p, n, self->mask, 0);
    else
        memcpy(dst, p, n);
    self->in_message = 0;
    self->state = S_HEADER;
    self->hdr_len = 0;
    if (self->check_utf8 && utf8_run(UTF8_ACCEPT, dst, n) != UTF8_ACCEPT) {
        Py_DECREF(payload);
        return fail(self, events, 1007, "invalid UTF-8 in a text message");
    }
    return emit(events, self->message_opcode, payload);
}

static PyObject *
FrameReader_feed(FrameReader *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = view.buf;
    Py_ssize_t n = view.len, pos = 0;
    PyObject *events = PyList_New(0);
    if (events == NULL)
        goto error;

    while (self->state != S_DONE) {
        if (self->state == S_HEADER) {
            if (pos >= n)
                break;
            /* the first two bytes, checked once they are in, then the rest of the header */
            if (self->hdr_len < 2) {
                while (self->hdr_len < 2 && pos < n)
                    self->hdr[self->hdr_len++] = p[pos++];
                if (self->hdr_len < 2)
                    break;
                if (check_first_bytes(self, events) < 0)
                    goto error;
            }
            int need = header_length(self->hdr);
            while (self->hdr_len < need && pos < n)
                self->hdr[self->hdr_len++] = p[pos++];
            if (self->hdr_len < need)
                break;
            int len1 = self->hdr[1] & 0x7F;
            unsigned long long length = (unsigned long long)len1;
            if (len1 == 126) {
                length = ((unsigned long long)self->hdr[2] << 8) | self->hdr[3];
                if (length < 126 && fail(self, events, 1002, "frame length not minimally encoded") < 0)
                    goto error;
            } else if (len1 == 127) {
                length = 0;
                for (int k = 0; k < 8; k++)
                    length = (length << 8) | self->hdr[2 + k];
                if (length >> 63) {
                    if (fail(self, events, 1002, "frame length of 2^63 or more") < 0)
                        goto error;
                } else if (length < 65536 && fail(self, events, 1002, "frame length not minimally encoded") < 0) {
                    goto error;
                }
            }
            if (begin_frame(self, events, length) < 0)
                goto error;
            self->state = S_PAYLOAD;
            if (!self->discard && self->opcode <= 7 && self->fin && self->message_length == length
                && length <= (unsigned long long)(n - pos)) {
                /* an unfragmented message entirely in this read */
                Py_ssize_t len = (Py_ssize_t)length;
                if (whole_message(self, events, p + pos, len) < 0)
                    goto error;
                pos += len;
                continue;
            }
        }
        /* S_PAYLOAD */
        Py_ssize_t take = n - pos;
        if ((unsigned long long)take > self->remaining)
            take = (Py_ssize_t)self->remaining;
        if (take > 0) {
            if (take_payload(self, events, p + pos, take) < 0)
                goto error;
            pos += take;
        }
        if (self->remaining == 0) {
            if (end_frame(self, events) < 0)
                goto error;
        } else {
            break;  /* the rest of this frame is in a later read */
        }
    }
    PyBuffer_Release(&view);
    return events;

error:
    PyBuffer_Release(&view);
    Py_XDECREF(events);
    return NULL;
}

static PyObject *
FrameReader_get_failed(FrameReader *self, void *closure)
{
    return PyBool_FromLong(self->failed);
}

static PyObject *
FrameReader_get_buffered(FrameReader *self, void *closure)
{
    return PyLong_FromSsize_t(self->message.len + self->control_len + self->hdr_len);
}

static PyMethodDef FrameReader_methods[] = {
    {"feed", (PyCFunction)FrameReader_feed, METH_O,
     "feed(data) -> list: [kind, payload, kind, payload, ...] for everything data completes.\n"
     "kind 1 text and 2 binary (payload: the message's bytes), 8 close, 9 ping, 10 pong (the\n"
     "frame's payload), -1 an error (payload: (close code, reason)); after an error only close\n"
     "frames are delivered, and after a close frame nothing."},
    {NULL}
};

static PyGetSetDef FrameReader_getset[] = {
    {"failed", (getter)FrameReader_get_failed, NULL, "an error was reported", NULL},
    {"buffered", (getter)FrameReader_get_buffered, NULL, "bytes held for a message not yet complete", NULL},
    {NULL}
};

static PyTypeObject FrameReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relayd.ws._cwire.FrameReader",
    .tp_basicsize = sizeof(FrameReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An RFC 6455 server-side frame reader (see relayd/ws/reader.py for the same in Python).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FrameReader_init,
    .tp_dealloc = (destructor)FrameReader_dealloc,
    .tp_methods = FrameReader_methods,
    .tp_getset = FrameReader_getset,
};

/* ---- send_many ----------------------------------------------------------------------------- */

/*
 * send_many(fds, data) -> list of what each socket took: len(data), fewer bytes, or -errno.
 * Non-blocking sends without SIGPIPE; EINTR is retried.
 */
static PyObject *
send_many(PyObject *module, PyObject *args)
{
    PyObject *fds;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oy*", &fds, &view))
        return NULL;
    PyObject *seq = PySequence_Fast(fds, "fds must be a sequence");
    if (seq == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (fd == -1 && PyErr_Occurred()) {
            Py_CLEAR(result);
            goto done;
        }
        ssize_t sent;
        do {
            sent = send((int)fd, view.buf, (size_t)view.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        PyObject *v = PyLong_FromSsize_t(sent < 0 ? -(Py_ssize_t)errno : (Py_ssize_t)sent);
        if (v == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, v);
    }
done:
    Py_DECREF(seq);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef module_methods[] = {
    {"send_many", send_many, METH_VARARGS,
     "send_many(fds, data) -> [taken, ...]: data sent to each socket without blocking; each entry\n"
     "is the bytes the socket took or -errno."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relayd.ws._cwire",
    "The compiled half of relayd's WebSocket wire path (see relayd/ws/wire.py).", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__cwire(void)
{
    if (PyType_Ready(&FrameReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FrameReaderType);
    if (PyModule_AddObject(m, "FrameReader", (PyObject *)&FrameReaderType) < 0) {
        Py_DECREF(&FrameReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
