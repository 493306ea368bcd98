/* JSON reader (see json.h). Everything is bounds-checked against d->len: the
 * input is whatever a host (or a fuzzer) sent. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

static int add_node(jdoc_t *d, jtype_t t)
{
	if (d->nn == d->ncap) {
		size_t cap = d->ncap ? d->ncap * 2 : 64;
		jnode_t *n = realloc(d->n, cap * sizeof *n);
		if (!n)
			return -1;
		d->n = n;
		d->ncap = cap;
	}
	jnode_t *x = &d->n[d->nn];
	memset(x, 0, sizeof *x);
	x->type = t;
	x->child = x->next = -1;
	return (int)d->nn++;
}

static void skip_ws(jdoc_t *d)
{
	while (d->pos < d->len) {
		char c = d->src[d->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		d->pos++;
	}
}

static int hex4(jdoc_t *d, unsigned *out)
{
	if (d->len - d->pos < 4)
		return -1;
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = d->src[d->pos++];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static void put_utf8(jdoc_t *d, unsigned cp)
{
	char *o = d->strings + d->sused;
	if (cp < 0x80) {
		o[0] = (char)cp;
		d->sused += 1;
	} else if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		d->sused += 2;
	} else if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		d->sused += 3;
	} else {
		o[0] = (char)(0xF0 | (cp >> 18));
		o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[3] = (char)(0x80 | (cp & 0x3F));
		d->sused += 4;
	}
}

/* Decodes a string at d->pos (just past the opening quote) into d->strings.
 * Decoded bytes never outnumber encoded ones (+1 for the NUL, paid for by the
 * two quotes), so the buffer sized len+1 cannot overflow. */
static int parse_string(jdoc_t *d, uint32_t *off, uint32_t *slen)
{
	size_t start = d->sused;
	for (;;) {
		if (d->pos >= d->len)
			return -1;
		unsigned char c = (unsigned char)d->src[d->pos++];
		if (c == '"')
			break;
		if (c < 0x20)
			return -1;
		if (c != '\\') {
			d->strings[d->sused++] = (char)c;
			continue;
		}
		if (d->pos >= d->len)
			return -1;
		char e = d->src[d->pos++];
		switch (e) {
		case '"': case '\\': case '/':
			d->strings[d->sused++] = e;
			break;
		case 'b': d->strings[d->sused++] = '\b'; break;
		case 'f': d->strings[d->sused++] = '\f'; break;
		case 'n': d->strings[d->sused++] = '\n'; break;
		case 'r': d->strings[d->sused++] = '\r'; break;
		case 't': d->strings[d->sused++] = '\t'; break;
		case 'u': {
			unsigned cp;
			if (hex4(d, &cp))
				return -1;
			if (cp >= 0xD800 && cp < 0xDC00) {
				unsigned lo;
				size_t save = d->pos;
				if (d->len - d->pos >= 6 && d->src[d->pos] == '\\' &&
				    d->src[d->pos + 1] == 'u') {
					d->pos += 2;
					if (hex4(d, &lo))
						return -1;
					if (lo >= 0xDC00 && lo < 0xE000) {
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					} else {
						d->pos = save;
						cp = 0xFFFD;
					}
				} else {
					cp = 0xFFFD;
				}
			} else if (cp >= 0xDC00 && cp < 0xE000) {
				cp = 0xFFFD;
			}
			put_utf8(d, cp);
			break;
		}
		default:
			return -1;
		}
	}
	*off = (uint32_t)start;
	*slen = (uint32_t)(d->sused - start);
	d->strings[d->sused++] = '\0';
	return 0;
}

static int parse_value(jdoc_t *d);

static int parse_number(jdoc_t *d)
{
	size_t p = d->pos;
	int neg = 0, isint = 1, digits = 0;
	int64_t v = 0;
	if (p < d->len && d->src[p] == '-') {
		neg = 1;
		p++;
	}
	while (p < d->len && d->src[p] >= '0' && d->src[p] <= '9') {
		int dig = d->src[p] - '0';
		if (v > (INT64_MAX - dig) / 10)
			isint = 0;
		else
			v = v * 10 + dig;
		p++;
		digits++;
	}
	if (!digits)
		return -1;
	if (p < d->len && d->src[p] == '.') {
		isint = 0;
		p++;
		int frac = 0;
		while (p < d->len && d->src[p] >= '0' && d->src[p] <= '9') {
			p++;
			frac++;
		}
		if (!frac)
			return -1;
	}
	if (p < d->len && (d->src[p] == 'e' || d->src[p] == 'E')) {
		isint = 0;
		p++;
		if (p < d->len && (d->src[p] == '+' || d->src[p] == '-'))
			p++;
		int ex = 0;
		while (p < d->len && d->src[p] >= '0' && d->src[p] <= '9') {
			p++;
			ex++;
		}
		if (!ex)
			return -1;
	}
	d->pos = p;
	int i = add_node(d, J_NUM);
	if (i < 0)
		return -1;
	d->n[i].isint = isint;
	d->n[i].num = neg ? -v : v;
	return i;
}

static int literal(jdoc_t *d, const char *word, jtype_t t, int64_t val)
{
	size_t n = strlen(word);
	if (d->len - d->pos < n || memcmp(d->src + d->pos, word, n) != 0)
		return -1;
	d->pos += n;
	int i = add_node(d, t);
	if (i >= 0)
		d->n[i].num = val;
	return i;
}

static int parse_container(jdoc_t *d, int is_obj)
{
	if (++d->depth > MAX_DEPTH)
		return -1;
	int self = add_node(d, is_obj ? J_OBJ : J_ARR);
	if (self < 0)
		return -1;
	d->pos++; /* '{' or '[' */
	int32_t last = -1;
	skip_ws(d);
	if (d->pos < d->len && d->src[d->pos] == (is_obj ? '}' : ']')) {
		d->pos++;
		d->depth--;
		return self;
	}
	for (;;) {
		uint32_t koff = 0, klen = 0;
		skip_ws(d);
		if (is_obj) {
			if (d->pos >= d->len || d->src[d->pos] != '"')
				return -1;
			d->pos++;
			if (parse_string(d, &koff, &klen))
				return -1;
			skip_ws(d);
			if (d->pos >= d->len || d->src[d->pos] != ':')
				return -1;
			d->pos++;
		}
		int child = parse_value(d);
		if (child < 0)
			return -1;
		d->n[child].key = koff;
		d->n[child].klen = klen;
		if (last < 0)
			d->n[self].child = child;
		else
			d->n[last].next = child;
		last = child;
		skip_ws(d);
		if (d->pos >= d->len)
			return -1;
		char c = d->src[d->pos++];
		if (c == ',')
			continue;
		if (c == (is_obj ? '}' : ']'))
			break;
		return -1;
	}
	d->depth--;
	return self;
}

static int parse_value(jdoc_t *d)
{
	skip_ws(d);
	if (d->pos >= d->len)
		return -1;
	char c = d->src[d->pos];
	switch (c) {
	case '{':
		return parse_container(d, 1);
	case '[':
		return parse_container(d, 0);
	case '"': {
		d->pos++;
		int i = add_node(d, J_STR);
		if (i < 0)
			return -1;
		uint32_t off, n;
		if (parse_string(d, &off, &n))
			return -1;
		d->n[i].str = off;
		d->n[i].slen = n;
		return i;
	}
	case 't':
		return literal(d, "true", J_BOOL, 1);
	case 'f':
		return literal(d, "false", J_BOOL, 0);
	case 'n':
		return literal(d, "null", J_NULL, 0);
	default:
		return parse_number(d);
	}
}

int json_parse(jdoc_t *d, const char *src, size_t len)
{
	memset(d, 0, sizeof *d);
	d->src = src;
	d->len = len;
	d->strings = malloc(len + 1);
	if (!d->strings)
		return -1;
	if (parse_value(d) != 0)
		return -1;
	skip_ws(d);
	return d->pos == d->len ? 0 : -1;
}

void json_free(jdoc_t *d)
{
	free(d->n);
	free(d->strings);
	d->n = NULL;
	d->strings = NULL;
}

int json_get(const jdoc_t *d, int obj, const char *key)
{
	if (obj < 0 || (size_t)obj >= d->nn || d->n[obj].type != J_OBJ)
		return -1;
	size_t kl = strlen(key);
	for (int32_t c = d->n[obj].child; c >= 0; c = d->n[c].next) {
		if (d->n[c].klen == kl && memcmp(d->strings + d->n[c].key, key, kl) == 0)
			return c;
	}
	return -1;
}

const char *json_node_str(const jdoc_t *d, int node, size_t *n)
{
	if (node < 0 || d->n[node].type != J_STR)
		return NULL;
	if (n)
		*n = d->n[node].slen;
	return d->strings + d->n[node].str;
}

int json_get_str(const jdoc_t *d, int obj, const char *key, const char **s, size_t *n)
{
	int i = json_get(d, obj, key);
	if (i < 0 || d->n[i].type == J_NULL)
		return 0;
	if (d->n[i].type != J_STR)
		return -1;
	*s = json_node_str(d, i, n);
	return 1;
}

int json_get_int(const jdoc_t *d, int obj, const char *key, int64_t *v)
{
	int i = json_get(d, obj, key);
	if (i < 0 || d->n[i].type == J_NULL)
		return 0;
	if (d->n[i].type != J_NUM || !d->n[i].isint)
		return -1;
	*v = d->n[i].num;
	return 1;
}

int json_get_bool(const jdoc_t *d, int obj, const char *key, int *v)
{
	int i = json_get(d, obj, key);
	if (i < 0 || d->n[i].type == J_NULL)
		return 0;
	if (d->n[i].type != J_BOOL)
		return -1;
	*v = (int)d->n[i].num;
	return 1;
}
