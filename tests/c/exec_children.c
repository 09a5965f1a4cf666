/* Run each PROGRAM ARG pair of its arguments in a forked child (fork, then exec), one after the other, and
 * print, once each has ended, "child PID faults F" with F its minor + major faults as the kernel charged them
 * to it (wait4's rusage: from its fork to its exit). */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            execl(argv[i], argv[i], argv[i + 1], (char *)NULL);
            _exit(127);
        }
        int status;
        struct rusage ru;
        if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) return 1;
        printf("child %d faults %ld\n", pid, ru.ru_minflt + ru.ru_majflt);
    }
    return 0;
}
