/* A small JSON reader for host frames: parses into a flat node array (indexes,
 * not pointers, so growth never dangles). Bounded: depth <= 64, strings decode
 * in place into a buffer no larger than the input. */
#ifndef MVM_JSON_H
#define MVM_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype_t;

typedef struct {
	jtype_t type;
	int isint;   /* J_NUM that is an integer in int64 range */
	int64_t num; /* J_NUM integer value, J_BOOL 0/1 */
	uint32_t str, slen; /* J_STR: offset/length in strings */
	uint32_t key, klen; /* object member: its key */
	int32_t child, next;
} jnode_t;

typedef struct {
	jnode_t *n;
	size_t nn, ncap;
	char *strings;
	size_t sused;
	const char *src;
	size_t len, pos;
	int depth;
} jdoc_t;

/* Returns 0 and fills d (root = node 0) or -1 on malformed input. */
int json_parse(jdoc_t *d, const char *src, size_t len);
void json_free(jdoc_t *d);
int json_get(const jdoc_t *d, int obj, const char *key); /* member index or -1 */
/* Typed getters: 1 = present with the right type, 0 = absent or null, -1 = wrong type. */
int json_get_str(const jdoc_t *d, int obj, const char *key, const char **s, size_t *n);
int json_get_int(const jdoc_t *d, int obj, const char *key, int64_t *v);
int json_get_bool(const jdoc_t *d, int obj, const char *key, int *v);
const char *json_node_str(const jdoc_t *d, int node, size_t *n);

#endif
