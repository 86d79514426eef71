/* The simulator's native client: what scripts/az-sim runs once scripts/build-az-sim.sh has
 * built it (to scripts/.build/az-sim). It does only the fast path of azsim/client.py: hand
 * the call to a fork server that listens already, and exit with the call's code. Anything
 * else (no server, another user's, a server that did not take the call, AZ_SIM_SERVER=0)
 * is the Python client's: this execs it with the same argv, before any byte of the call
 * was sent, so a call runs once. Why: a Python start costs ~10-17 ms of CPU, most of a
 * small call, on the 2 cores the tool under test shares with the simulator. The protocol
 * and the server's name are in wire.py. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#define ACCEPTED 1
#define MAX_FILES 256

extern char **environ;
static char here[PATH_MAX];  /* scripts/: this binary is scripts/.build/az-sim */

/* Run the call with the Python client instead (it starts a server or runs the call). */
static void python_client(char **argv) {
    char client[PATH_MAX + 32];
    snprintf(client, sizeof client, "%s/azsim/client.py", here);
    int argc = 0;
    while (argv[argc]) argc++;
    char **args = calloc(argc + 4, sizeof *args);
    if (!args) _exit(127);
    args[0] = "python3"; args[1] = "-I"; args[2] = "-S"; args[3] = client;
    for (int i = 1; i < argc; i++) args[3 + i] = argv[i];
    execvp("python3", args);
    fprintf(stderr, "ERROR: az-sim: cannot run python3: %s\n", strerror(errno));
    _exit(127);
}

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* wire.server_name: uid, niceness, session and the version of azsim/ (its .py files'
 * names, mtimes and sizes, hashed with the code directory). 0 on success. */
static int server_name(char *out, size_t size) {
    char dir[PATH_MAX + 8], path[PATH_MAX + 300], number[64];
    snprintf(dir, sizeof dir, "%s/azsim", here);
    DIR *d = opendir(dir);
    if (!d) return -1;
    char *names[MAX_FILES];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < MAX_FILES) {
        size_t len = strlen(e->d_name);
        if (len > 3 && strcmp(e->d_name + len - 3, ".py") == 0) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    uint64_t h = fnv(14695981039346656037ULL, here, strlen(here));
    for (int i = 0; i < n; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) != 0) return -1;
        int len = snprintf(number, sizeof number, "%lld %lld",
                           (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                           (long long)st.st_size);
        h = fnv(fnv(fnv(h, "/", 1), names[i], strlen(names[i])), " ", 1);
        h = fnv(h, number, len);
        free(names[i]);
    }
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (errno) return -1;
    snprintf(out, size, "az-sim-%d-%d-%d-%016llx", (int)getuid(), nice, (int)getsid(0),
             (unsigned long long)h);
    return 0;
}

/* A connection to our user's server, or -1. */
static int connect_server(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (server_name(addr.sun_path + 1, sizeof addr.sun_path - 1) != 0) return -1;
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr.sun_path + 1);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct ucred cred;
    socklen_t cred_len = sizeof cred;
    if (sock < 0) return -1;
    if (connect(sock, (struct sockaddr *)&addr, len) != 0
        || getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0
        || cred.uid != getuid()) {  /* another user's (the name is predictable) */
        close(sock);
        return -1;
    }
    return sock;
}

struct buffer { char *data; size_t size, cap; };

static void put(struct buffer *b, const char *s, size_t n) {
    if (b->size + n + 1 > b->cap) {
        b->cap = (b->size + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data) _exit(127);
    }
    memcpy(b->data + b->size, s, n);
    b->size += n;
}

/* wire.request: cwd, argc, the arguments and the environment, each ended by a NUL. */
static struct buffer request(int argc, char **argv) {
    struct buffer b = {0};
    char count[16], *cwd = getcwd(NULL, 0);  /* any length, as os.getcwdb() */
    put(&b, cwd ? cwd : "/", cwd ? strlen(cwd) + 1 : 2);  /* removed under us: as client.py */
    free(cwd);
    put(&b, count, (size_t)snprintf(count, sizeof count, "%d", argc - 1) + 1);
    for (int i = 1; i < argc; i++) put(&b, argv[i], strlen(argv[i]) + 1);
    for (char **e = environ; *e; e++) put(&b, *e, strlen(*e) + 1);
    return b;
}

/* Sends the request with fds 0-2; 0 once the server said it has the call. */
static int hand_over(int sock, int argc, char **argv) {
    struct buffer b = request(argc, argv);
    unsigned char head[4] = {b.size >> 24, b.size >> 16, b.size >> 8, b.size};
    int fds[3] = {0, 1, 2};
    union { char bytes[CMSG_SPACE(sizeof fds)]; struct cmsghdr align; } control = {0};
    struct iovec iov = {head, sizeof head};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof head) return -1;
    for (size_t sent = 0; sent < b.size;) {
        ssize_t n = send(sock, b.data + sent, b.size - sent, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        sent += (size_t)n;
    }
    free(b.data);
    unsigned char answer;
    return recv(sock, &answer, 1, 0) == 1 && answer == ACCEPTED ? 0 : -1;
}

/* client.py's log_call: `<epoch seconds> <argv>` appended to AZ_SIM_CALL_LOG. */
static void log_call(int argc, char **argv) {
    const char *path = getenv("AZ_SIM_CALL_LOG");
    if (!path || !*path) return;
    struct buffer b = {0};
    struct timeval now;
    char stamp[32];
    gettimeofday(&now, NULL);
    put(&b, stamp, (size_t)snprintf(stamp, sizeof stamp, "%lld.%06ld",
                                    (long long)now.tv_sec, (long)now.tv_usec));
    put(&b, " ", 1);
    for (int i = 1; i < argc; i++) {
        if (i > 1) put(&b, " ", 1);
        for (const char *c = argv[i]; *c; c++) put(&b, *c == '\n' ? "\\n" : c, *c == '\n' ? 2 : 1);
    }
    put(&b, "\n", 1);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    ssize_t written = fd < 0 ? -1 : write(fd, b.data, b.size);
    if (written != (ssize_t)b.size)
        fprintf(stderr, "WARNING: az-sim: cannot write AZ_SIM_CALL_LOG %s: %s\n", path,
                written < 0 ? strerror(errno) : "a short write");
    if (fd >= 0) close(fd);
    free(b.data);
}

/* scripts/ from this binary's path, scripts/.build/az-sim (argv[0], as scripts/az-sim runs
 * it, else /proc/self/exe); 0 if neither tells. */
static int find_here(const char *argv0) {
    char *slash;
    if (!(strchr(argv0, '/') && realpath(argv0, here)) && !realpath("/proc/self/exe", here))
        return 0;
    for (int up = 0; up < 2; up++) {  /* scripts/.build, then scripts */
        if (!(slash = strrchr(here, '/')) || slash == here) return 0;
        *slash = 0;
    }
    return 1;
}

static void interrupted(int sig) {
    (void)sig;
    _exit(130);  /* as the Python client's KeyboardInterrupt */
}

int main(int argc, char **argv) {
    for (int fd = 0; fd < 3; fd++) {  /* client.py's fill_standard_fds */
        struct stat st;
        if (fstat(fd, &st) != 0) dup2(open("/dev/null", O_RDWR), fd);
    }
    struct sigaction sigint;
    if (sigaction(SIGINT, NULL, &sigint) == 0 && sigint.sa_handler == SIG_DFL)
        signal(SIGINT, interrupted);  /* as Python: an ignored SIGINT stays ignored */
    if (!find_here(argv[0])) {
        fputs("ERROR: az-sim: the native client cannot tell where it is\n", stderr);
        return 127;
    }
    const char *server = getenv("AZ_SIM_SERVER");
    int sock = server && strcmp(server, "0") == 0 ? -1 : connect_server();
    if (sock < 0 || hand_over(sock, argc, argv) != 0) python_client(argv);
    log_call(argc, argv);
    unsigned char code;
    ssize_t got;
    do got = recv(sock, &code, 1, 0); while (got < 0 && errno == EINTR);
    if (got == 1) return code;
    fputs("ERROR: az-sim: the simulator's server ended the call early\n", stderr);
    return 1;
}
