# shellcheck shell=sh
# Login shells (`bash -l`) reset PATH in /etc/profile; put Hadoop's bin back.
case ":${PATH}:" in
    *:/opt/hadoop/bin:*) ;;
    *) PATH="/opt/hadoop/bin:${PATH}"; export PATH ;;
esac
